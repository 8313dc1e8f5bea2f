"""Bundled run-study configurations."""
