"""sonoaudit raters service."""
