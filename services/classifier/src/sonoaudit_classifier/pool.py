"""One :class:`Classifier` per backend per process, shared by the API and the job worker so the
per-model concurrency and rate limits hold for everything the process sends."""

from __future__ import annotations

import asyncio

from sonoaudit_classifier.backends import make_backend
from sonoaudit_classifier.engine import Classifier
from sonoaudit_classifier.settings import ClassifierSettings, require_backend


class ClassifierPool:
    def __init__(self, settings: ClassifierSettings) -> None:
        self.settings = settings
        self._by_backend: dict[str, Classifier] = {}
        self._lock = asyncio.Lock()

    async def get(self, backend: str | None = None) -> Classifier:
        """Raises UnknownBackend / BackendNotConfigured when the backend cannot run."""
        name = require_backend(self.settings, backend)
        async with self._lock:
            if name not in self._by_backend:
                self._by_backend[name] = Classifier(make_backend(self.settings, name),
                                                    self.settings)
            return self._by_backend[name]

    @property
    def classifiers(self) -> dict[str, Classifier]:
        return self._by_backend

    async def aclose(self) -> None:
        for clf in self._by_backend.values():
            await clf.backend.aclose()
        self._by_backend.clear()
