"""Study planning by simulation: reader panels with a given accuracy (lower on synthetic
images), class mix and size → the expected width of the 95 % bootstrap CI of Fleiss' kappa,
Krippendorff's alpha and the real − synthetic accuracy difference. Everything here is SIMULATED."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sonoaudit_raters.stats.accuracy import accuracy
from sonoaudit_raters.stats.agreement import agreement
from sonoaudit_raters.stats.bootstrap import difference
from sonoaudit_raters.stats.table import RatingTable

CLASSES = ["benign", "malignant", "normal"]


@dataclass(frozen=True)
class PanelSpec:
    accuracy: float = 0.8  # on real images
    accuracy_drop: float = 0.1  # how much lower on synthetic images
    class_mix: tuple[float, ...] = (0.45, 0.45, 0.10)
    # Share of wrong answers that go to the item's one "look-alike" class instead of a random
    # other class: readers then err together, raising agreement at the same accuracy.
    error_correlation: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.error_correlation <= 1:
            raise ValueError("error correlation must be in [0, 1]")
        if len(self.class_mix) != len(CLASSES) or abs(sum(self.class_mix) - 1) > 1e-6:
            raise ValueError(f"class mix must be {len(CLASSES)} shares summing to 1, "
                             f"got {self.class_mix}")
        if not 0 < self.accuracy - self.accuracy_drop <= 1:
            raise ValueError("accuracy - accuracy_drop must be in (0, 1]")


def simulate_panel(spec: PanelSpec, n_images: int, n_readers: int,
                   rng: np.random.Generator) -> RatingTable:
    """Half real, half synthetic; a wrong answer is a uniformly chosen other class."""
    q = len(CLASSES)
    truth = rng.choice(q, size=n_images, p=list(spec.class_mix))
    source = np.array(["real", "synthetic"])[np.arange(n_images) % 2]
    p_right = np.where(source == "real", spec.accuracy, spec.accuracy - spec.accuracy_drop)
    right = rng.random((n_images, n_readers)) < p_right[:, None]
    random_wrong = (truth[:, None] + rng.integers(1, q, size=(n_images, n_readers))) % q
    decoy = (truth + rng.integers(1, q, size=n_images)) % q
    shared = rng.random((n_images, n_readers)) < spec.error_correlation
    wrong = np.where(shared, decoy[:, None], random_wrong)
    codes = np.where(right, truth[:, None], wrong).astype(np.int64)
    return RatingTable([f"sim{i}" for i in range(n_images)],
                       [f"simulated reader {j + 1}" for j in range(n_readers)], list(CLASSES),
                       codes, "nominal",
                       {"source": list(source), "ground_truth": [CLASSES[t] for t in truth],
                        "dataset": ["simulated"] * n_images})


def _width(ci: list[float] | None) -> float:
    return float("nan") if ci is None else ci[1] - ci[0]


def plan(spec: PanelSpec, images: list[int], readers: list[int], *, simulations: int = 20,
         n_boot: int = 500, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    rows = []
    for n_img in images:
        for n_rd in readers:
            kappa, wk, wa, wd = [], [], [], []
            for s in range(simulations):
                t = simulate_panel(spec, n_img, n_rd, rng)
                ag = agreement(t, n_boot=n_boot, seed=seed + s, pairwise=False)
                kappa.append(ag["fleiss_kappa"].value if ag["fleiss_kappa"].value is not None
                             else np.nan)
                wk.append(_width(ag["fleiss_kappa"].ci95()))
                wa.append(_width(ag["krippendorff_alpha"].ci95()))
                src = np.array(t.attrs["source"])
                accs = []
                for k, name in enumerate(("real", "synthetic")):
                    sub = t.subset(src == name)
                    accs.append(accuracy(sub, sub.attrs["ground_truth"], n_boot=n_boot,
                                         seed=seed + 31 * s + k)["majority_vote"]["accuracy"])
                wd.append(_width(difference(accs[0], accs[1]).ci95()))
            rows.append({"n_images": n_img, "n_readers": n_rd,
                         "fleiss_kappa_mean": float(np.nanmean(kappa)),
                         "ci_width_fleiss_kappa": float(np.nanmean(wk)),
                         "ci_width_alpha": float(np.nanmean(wa)),
                         "ci_width_accuracy_difference": float(np.nanmean(wd))})
    return {"simulated": True,
            "assumptions": (f"reader accuracy {spec.accuracy:.2f} on real, "
                            f"{spec.accuracy - spec.accuracy_drop:.2f} on synthetic images; "
                            f"class mix {dict(zip(CLASSES, spec.class_mix, strict=True))}; "
                            f"error correlation {spec.error_correlation:.2f}; "
                            f"half real, half synthetic; independent readers; {simulations} "
                            f"simulations per cell, B={n_boot}; accuracy difference = majority "
                            "vote (ties count wrong), real − synthetic"),
            "spec": {"accuracy": spec.accuracy, "accuracy_drop": spec.accuracy_drop,
                     "class_mix": list(spec.class_mix),
                     "error_correlation": spec.error_correlation},
            "seed": seed, "rows": rows}
