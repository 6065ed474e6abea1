"""The ``deepfake-guard`` command line: one console script, one module per subcommand."""

__version__ = "0.1.0"
