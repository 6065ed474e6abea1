"""RQ glue: thin job functions and the worker entry point that loads the detectors once."""
