"""The ``myx`` command line."""
