"""Mask realism (lesion area, compactness, component count: synthetic vs real distributions) and
image/mask alignment (grey level inside vs outside the lesion; real lesions are hypoechoic)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats
from skimage.measure import label, regionprops

from sonoaudit_metrics.samples import ImageSample

if TYPE_CHECKING:
    from sonoaudit.filestore import FileStore

FEATURES = ("area_fraction", "compactness", "component_count")


def mask_shape(mask: np.ndarray) -> dict[str, float | None]:
    """Area as a fraction of the image, number of 8-connected components, and compactness
    4·π·area/perimeter² of the largest component (1 for a disc; None for an empty mask)."""
    lab = label(mask.astype(np.uint8), connectivity=2)
    props = regionprops(lab)
    area_fraction = float(mask.sum()) / mask.size
    if not props:
        return {"area_fraction": area_fraction, "compactness": None, "component_count": 0.0}
    largest = max(props, key=lambda p: p.area)
    perim = float(largest.perimeter)
    compact = min(1.0, 4.0 * math.pi * float(largest.area) / perim**2) if perim > 0 else None
    return {"area_fraction": area_fraction, "compactness": compact,
            "component_count": float(len(props))}


def _describe(v: np.ndarray) -> dict[str, float | int | None]:
    if v.size == 0:
        return {"mean": None, "std": None, "median": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
            "n": int(v.size)}


def _plot(values: dict[str, dict[str, np.ndarray]], store: FileStore) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, str] = {}
    for feat, sides in values.items():
        fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
        both = np.concatenate([sides["real"], sides["synthetic"]])
        if both.size == 0:
            plt.close(fig)
            continue
        bins = np.histogram_bin_edges(both, bins=min(20, max(5, both.size // 4)))
        for side, colour in (("real", "tab:blue"), ("synthetic", "tab:orange")):
            if sides[side].size:
                ax.hist(sides[side], bins=bins.tolist(), alpha=0.55, density=True, color=colour,
                        label=f"{side} (n={sides[side].size})")
        ax.set_xlabel(feat.replace("_", " "))
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        _, rel = store.put(buf.getvalue(), ".png")
        paths[feat] = rel
    return paths


def mask_realism(real: Sequence[ImageSample], synthetic: Sequence[ImageSample],
                 store: FileStore | None = None) -> dict[str, Any]:
    real_m = [s.mask for s in real if s.mask is not None]
    syn_m = [s.mask for s in synthetic if s.mask is not None]
    if len(real_m) < 2 or len(syn_m) < 2:
        return {"value": None, "reason": (
            f"mask realism needs at least 2 masks per side, got real={len(real_m)}, "
            f"synthetic={len(syn_m)}")}
    shapes = {"real": [mask_shape(m) for m in real_m],
              "synthetic": [mask_shape(m) for m in syn_m]}
    values: dict[str, dict[str, np.ndarray]] = {}
    features: dict[str, Any] = {}
    for feat in FEATURES:
        sides = {side: np.asarray([d[feat] for d in rows if d[feat] is not None], dtype=float)
                 for side, rows in shapes.items()}
        values[feat] = sides
        entry: dict[str, Any] = {"real": _describe(sides["real"]),
                                 "synthetic": _describe(sides["synthetic"])}
        if sides["real"].size and sides["synthetic"].size:
            entry["wasserstein"] = float(stats.wasserstein_distance(sides["real"],
                                                                    sides["synthetic"]))
            ks = stats.ks_2samp(sides["real"], sides["synthetic"])
            entry["ks_statistic"] = float(ks.statistic)
            entry["ks_pvalue"] = float(ks.pvalue)
        else:
            entry["wasserstein"] = None
            entry["reason"] = "one side has no non-empty masks"
        features[feat] = entry
    out: dict[str, Any] = {
        "n_real": len(real_m), "n_synthetic": len(syn_m),
        "empty_rate": {side: float(np.mean([d["component_count"] == 0 for d in rows]))
                       for side, rows in shapes.items()},
        "features": features,
        "notes": "area_fraction = lesion pixels / image pixels; compactness on the largest "
                 "component; counts use 8-connectivity; distances: 1-D Wasserstein and "
                 "two-sample KS",
    }
    out["plots"] = _plot(values, store) if store is not None else {}
    return out


def _alignment_side(samples: Sequence[ImageSample]) -> dict[str, Any]:
    inside, outside = [], []
    for s in samples:
        if s.mask is None:
            continue
        m = s.mask.astype(bool)
        if not m.any() or m.all():
            continue
        inside.append(float(s.image[m].mean()))
        outside.append(float(s.image[~m].mean()))
    if not inside:
        return {"value": None, "reason": "no image with a non-empty, non-full mask"}
    a, b = np.asarray(inside), np.asarray(outside)
    return {"inside_mean": float(a.mean()), "outside_mean": float(b.mean()),
            "contrast_mean": float((a - b).mean()), "contrast_std": float((a - b).std()),
            "hypoechoic_fraction": float((a < b).mean()), "n": int(a.size)}


def alignment(real: Sequence[ImageSample], synthetic: Sequence[ImageSample]) -> dict[str, Any]:
    return {"real": _alignment_side(real), "synthetic": _alignment_side(synthetic),
            "notes": "mean grey (0-255) inside vs outside the lesion mask; contrast = inside - "
                     "outside; hypoechoic_fraction = share of images with a darker lesion"}
