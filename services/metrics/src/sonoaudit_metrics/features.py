"""Inception features of an image set, batched by image size, with an on-disk cache keyed by
content: the same real set is never pushed through the network twice."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sonoaudit_metrics.inception import RESIZE_MODE, FIDInceptionFeatures
from sonoaudit_metrics.samples import ImageSample

log = logging.getLogger(__name__)


def set_key(samples: Sequence[ImageSample], extractor: FIDInceptionFeatures) -> str:
    """Content hash of (extractor weights, tap, preprocessing, every image in order)."""
    h = hashlib.sha256()
    h.update(f"{extractor.weights_sha256}|{extractor.feature_dim}|{RESIZE_MODE}".encode())
    for s in samples:
        h.update(s.sha256.encode())
    return h.hexdigest()


def _batches(samples: Sequence[ImageSample], batch_size: int) -> list[list[int]]:
    """Indices grouped by image shape (so a batch is one tensor), then cut to ``batch_size``."""
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_shape[s.image.shape].append(i)
    out: list[list[int]] = []
    for idx in by_shape.values():
        out.extend(idx[j:j + batch_size] for j in range(0, len(idx), batch_size))
    return out


def compute_features(samples: Sequence[ImageSample], extractor: FIDInceptionFeatures,
                     batch_size: int = 32, progress: bool = True, desc: str = "features"
                     ) -> np.ndarray:
    """(N, d) float32 features in the order of ``samples``."""
    out = np.empty((len(samples), extractor.feature_dim), dtype=np.float32)
    with tqdm(total=len(samples), desc=desc, unit="img", disable=not progress) as bar:
        for idx in _batches(samples, batch_size):
            x = torch.from_numpy(np.stack([samples[i].image for i in idx]))[:, None]
            out[idx] = extractor(x).numpy()
            bar.update(len(idx))
    if not np.isfinite(out).all():
        raise ArithmeticError("Inception features contain NaN/inf")
    return out


class FeatureCache:
    """``<dir>/<key>.npy``; written atomically so a crash never leaves a half file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        p = self.path(key)
        if not p.exists():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:  # corrupt cache entry: recompute, do not fail
            log.warning("ignoring unreadable feature cache %s: %s", p, exc)
            return None

    def put(self, key: str, features: np.ndarray) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".npy.tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, features, allow_pickle=False)
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def features_for(samples: Sequence[ImageSample], extractor: FIDInceptionFeatures,
                 cache: FeatureCache | None = None, batch_size: int = 32,
                 progress: bool = True, desc: str = "features") -> tuple[np.ndarray, bool]:
    """(features, from_cache)."""
    key = set_key(samples, extractor)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None and hit.shape == (len(samples), extractor.feature_dim):
            return hit, True
    feats = compute_features(samples, extractor, batch_size, progress, desc)
    if cache is not None:
        cache.put(key, feats)
    return feats, False
