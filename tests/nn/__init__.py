"""Package marker: tests/nn/test_attention.py and tests/ops/test_attention.py share a basename,
which pytest's default (prepend) import mode only allows when one of them is in a package."""
