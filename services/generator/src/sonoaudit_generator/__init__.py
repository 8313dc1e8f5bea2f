"""sonoaudit generator service."""
