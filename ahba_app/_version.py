"""The version of ahba-app, read by pyproject.toml and the command line."""

__version__ = "0.1.0"
