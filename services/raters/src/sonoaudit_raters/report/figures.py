"""PNG figures for the report (matplotlib, Agg backend: no display, no network)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

AGREEMENT_KEYS = (("percent_agreement", "% agreement"), ("fleiss_kappa", "Fleiss κ"),
                  ("krippendorff_alpha", "Krippendorff α"), ("gwet_ac1", "Gwet AC1"))


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


CONFIDENCE_KEYS = (("percent_agreement", "% exact agreement"),
                   ("alpha:ordinal", "Krippendorff α ordinal"),
                   ("alpha:interval", "Krippendorff α interval"))


def _stat(res: dict[str, Any], key: str) -> dict[str, Any]:
    if key.startswith("alpha:"):
        return dict(res["krippendorff_alpha_by_level"].get(key[6:]) or {})
    return dict(res[key])


def forest(strata: dict[str, dict[str, Any]], title: str, banner: str | None,
           keys: tuple[tuple[str, str], ...] = AGREEMENT_KEYS) -> bytes:
    """Each agreement statistic per stratum with its 95 % CI (undefined ones marked)."""
    plt = _plt()
    labels = list(strata)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 0.45 * len(labels) + 1.6),
                             sharey=True)
    y = np.arange(len(labels))[::-1]
    for ax, (key, name) in zip(axes, keys, strict=True):
        for yy, lab in zip(y, labels, strict=True):
            e = _stat(strata[lab], key)
            if e.get("value") is None:
                ax.text(0, yy, "undefined", va="center", fontsize=7, color="grey")
                continue
            ci = e.get("ci95") or [e["value"], e["value"]]
            # A percentile bootstrap CI need not contain the point estimate (small n, skewed
            # statistics), so draw the interval itself rather than offsets from the point.
            ax.hlines(yy, ci[0], ci[1], color="C0")
            ax.plot([e["value"]], [yy], "o", color="C0")
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlim(-1.05, 1.05)
        ax.set_title(name, fontsize=9)
    axes[0].set_yticks(y, [f"{lab} (n={strata[lab]['n_items']})" for lab in labels], fontsize=7)
    fig.suptitle(title + (f" — {banner}" if banner else ""), fontsize=10)
    return _png(fig)


def accuracy_bars(rows: list[tuple[str, dict[str, Any], dict[str, Any] | None]],
                  banner: str | None) -> bytes:
    """Accuracy of each rater on real vs synthetic items, with 95 % CIs."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2), 3.4))
    x = np.arange(len(rows))
    for off, idx, name, color in ((-0.2, 1, "real", "C0"), (0.2, 2, "synthetic", "C1")):
        vals, lo, hi = [], [], []
        for row in rows:
            e: dict[str, Any] | None = row[idx]  # type: ignore[assignment]
            v = e.get("value") if e else None
            ci = (e or {}).get("ci95") or [v, v]
            vals.append(np.nan if v is None else v)
            lo.append(np.nan if v is None else ci[0])
            hi.append(np.nan if v is None else ci[1])
        ax.bar(x + off, vals, 0.4, label=name, color=color)
        ax.vlines(x + off, lo, hi, color="black", lw=1)  # 95 % CI (need not contain the bar)
    ax.set_xticks(x, [r[0] for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy vs ground truth")
    ax.legend(fontsize=8)
    ax.set_title("Accuracy, real vs synthetic" + (f" — {banner}" if banner else ""), fontsize=10)
    return _png(fig)


def confusion(cm: dict[str, Any], title: str) -> bytes:
    plt = _plt()
    counts = np.array(cm["counts"])
    fig, ax = plt.subplots(figsize=(0.9 * counts.shape[1] + 1.8, 0.9 * counts.shape[0] + 1.2))
    ax.imshow(counts, cmap="Blues")
    for (i, j), v in np.ndenumerate(counts):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=9,
                color="white" if v > counts.max() / 2 else "black")
    ax.set_xticks(range(counts.shape[1]), cm["cols_answer"], fontsize=7, rotation=30)
    ax.set_yticks(range(counts.shape[0]), cm["rows_truth"], fontsize=7)
    ax.set_xlabel("answer")
    ax.set_ylabel("ground truth")
    ax.set_title(f"{title} (n={int(counts.sum())})", fontsize=9)
    return _png(fig)


def confidence_histogram(hist: dict[str, dict[str, int]], banner: str | None,
                         title: str = "Confidence, real vs synthetic") -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    levels = list(next(iter(hist.values())))
    x = np.arange(len(levels))
    for off, (src, color) in zip((-0.2, 0.2), (("real", "C0"), ("synthetic", "C1")),
                                 strict=True):
        counts = np.array([hist.get(src, {}).get(v, 0) for v in levels], dtype=float)
        n = counts.sum()
        ax.bar(x + off, counts / n if n else counts, 0.4, color=color,
               label=f"{src} (n={int(n)})")
    ax.set_xticks(x, levels)
    ax.set_xlabel("reader confidence in the annotation")
    ax.set_ylabel("share of answers")
    ax.legend(fontsize=8)
    ax.set_title(title + (f" — {banner}" if banner else ""), fontsize=10)
    return _png(fig)


def image_grid(pairs: list[tuple[str, Path | None, Path | None]], title: str,
               cols: int = 6) -> bytes | None:
    """Each image beside its mask overlay (red outline tint)."""
    from PIL import Image as PILImage

    if not pairs:
        return None
    plt = _plt()
    rows = int(np.ceil(len(pairs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (label, img_p, mask_p) in zip(axes.ravel(), pairs, strict=False):
        if img_p is None or not img_p.exists():
            ax.text(0.5, 0.5, "image file\nmissing", ha="center", va="center", fontsize=7)
            ax.set_title(label, fontsize=6)
            continue
        img = np.asarray(PILImage.open(img_p).convert("L").resize((128, 128)))
        rgb = np.stack([img] * 3, axis=-1).astype(float) / 255.0
        if mask_p is not None and mask_p.exists():
            m = np.asarray(PILImage.open(mask_p).convert("L").resize((128, 128))) > 127
            rgb[m] = 0.6 * rgb[m] + 0.4 * np.array([1.0, 0.1, 0.1])
        ax.imshow(rgb)
        ax.set_title(label, fontsize=6)
    fig.suptitle(title, fontsize=10)
    return _png(fig)
