"""sonoaudit classifier service."""
