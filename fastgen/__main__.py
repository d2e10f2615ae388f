"""``python -m fastgen`` is the ``fastgen`` command."""

import sys

from .cli import main

sys.exit(main())
