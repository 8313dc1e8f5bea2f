"""sonoaudit metrics service."""
