"""Inception features of an image set, in batches mixing any sizes, with an on-disk cache keyed by
content: the same real set is never pushed through the network twice."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sonoaudit_metrics.inception import RESIZE_MODE, FIDInceptionFeatures, to_inception_input
from sonoaudit_metrics.samples import ImageSample

log = logging.getLogger(__name__)


def set_key(samples: Sequence[ImageSample], extractor: FIDInceptionFeatures) -> str:
    """Content hash of (extractor weights, tap, preprocessing, every image in order)."""
    h = hashlib.sha256()
    h.update(f"{extractor.weights_sha256}|{extractor.feature_dim}|{RESIZE_MODE}".encode())
    for s in samples:
        h.update(s.sha256.encode())
    return h.hexdigest()


def compute_features(samples: Sequence[ImageSample], extractor: FIDInceptionFeatures,
                     batch_size: int = 32, progress: bool = True, desc: str = "features"
                     ) -> np.ndarray:
    """(N, d) float32 features in the order of ``samples``.

    Each image is resized on its own (the resize depends on that image only, so this equals
    resizing a batch), which lets images of different sizes share full batches.
    """
    out = np.empty((len(samples), extractor.feature_dim), dtype=np.float32)
    with tqdm(total=len(samples), desc=desc, unit="img", disable=not progress) as bar:
        for j in range(0, len(samples), batch_size):
            chunk = samples[j:j + batch_size]
            x = torch.cat([to_inception_input(torch.from_numpy(s.image)[None, None])
                           for s in chunk])
            out[j:j + len(chunk)] = extractor.forward_prepared(x).numpy()
            bar.update(len(chunk))
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
