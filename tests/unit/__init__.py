"""Pure tests: no Ray cluster is started here (tests/unit/conftest.py enforces it)."""
