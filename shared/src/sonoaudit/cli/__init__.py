"""The ``sonoaudit`` command line."""
