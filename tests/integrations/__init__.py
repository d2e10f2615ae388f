"""Package marker (see tests/nn/__init__.py): test basenames here may repeat ones elsewhere."""
