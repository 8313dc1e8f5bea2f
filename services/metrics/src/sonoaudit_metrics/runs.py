"""Metric runs in the results store: score two references and keep the result as a MetricRun."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sonoaudit.datasets.records import CLASSES
from sonoaudit.db.models import MetricRun
from sqlalchemy import select

from sonoaudit_metrics.config import MetricsSettings
from sonoaudit_metrics.inception import WeightsError
from sonoaudit_metrics.samples import ImageSample, SampleError, load_ref, square_size
from sonoaudit_metrics.scoring import ScoreOptions, score_sets

if TYPE_CHECKING:
    from sonoaudit.context import AppContext

log = logging.getLogger(__name__)


def run_as_dict(run: MetricRun) -> dict[str, Any]:
    return {
        "id": run.id, "job_id": run.job_id, "real_ref": run.real_ref,
        "synthetic_ref": run.synthetic_ref, "class_label": run.class_label,
        "status": run.status, "error": run.error, "results": run.results,
        "provenance": run.provenance,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def known_failure(exc: BaseException) -> tuple[int, str] | None:
    """(HTTP status, reason) of a run that failed for a reason a retry cannot fix: unusable
    input (422: a bad reference or file, a result that came out NaN/infinite/complex) or
    missing or foreign Inception weights (503: the service cannot score until configured).
    None for anything else (a bug or a transient fault)."""
    if isinstance(exc, SampleError):
        return 422, str(exc)
    if isinstance(exc, ArithmeticError):
        return 422, f"the sets cannot be scored: {exc}"
    if isinstance(exc, WeightsError):
        return 503, f"metrics weights unavailable: {exc}"
    return None


PREPROCESS_RULE = ("sonoaudit.datasets.pairs.preprocess (what the generator trains on): longer "
                   "side scaled to the synthetic size (bicubic; mask nearest), aspect kept, "
                   "centred, padded to a square with 0")
SYNTHETIC_KINDS = ("pairs", "generation_run")


def class_list(samples: list[ImageSample]) -> str:
    """'benign 40, malignant 39' (fixed class order), or that there is none."""
    counts: dict[str, int] = {}
    for x in samples:
        if x.class_label is not None:
            counts[x.class_label] = counts.get(x.class_label, 0) + 1
    if not counts:
        return "none (its images carry no class label)"
    order = [c for c in CLASSES if c in counts] + sorted(set(counts) - set(CLASSES))
    return ", ".join(f"{c} {counts[c]}" for c in order)


def check_class(ctx: AppContext | None, class_label: str, refs: dict[str, str]) -> None:
    """Raise for a ``--class`` that left a side empty, naming the classes each side does have:
    "unknown class 'foo' (classes here: …)" for a name that is no class, else "no 'normal'
    images in the real set … (classes here: …)". Reads the sets again unfiltered (error path
    only)."""
    sides = {side: load_ref(ref, ctx)[0] for side, ref in refs.items()}
    here = "; ".join(f"{side} {class_list(samples)}" for side, samples in sides.items())
    present = {x.class_label for samples in sides.values() for x in samples}
    if class_label not in CLASSES and class_label not in present:
        raise SampleError(f"unknown class {class_label!r} (classes here: {here}; a class is "
                          f"one of {', '.join(CLASSES)})")
    for side, samples in sides.items():
        if not any(x.class_label == class_label for x in samples):
            raise SampleError(f"no {class_label!r} images in the {side} set {refs[side]} "
                              f"(classes here: {here})")


def load_sets(ctx: AppContext | None, real_ref: str, synthetic_ref: str,
              class_label: str | None = None
              ) -> tuple[list[ImageSample], list[ImageSample], dict[str, Any]]:
    """(real, synthetic, info) of two references. A real dataset scored against generated
    images (all squares of one size S) is read as its S×S preprocessed copies, the geometry the
    generator was trained on and emits, so FID/KID, mask areas and memorisation compare like
    with like; ``info`` (kinds, ``real_geometry``, ``warnings``) goes into the provenance."""
    class_warnings: list[str] = []
    scope: dict[str, Any] | None = None
    synthetic, syn_kind = load_ref(synthetic_ref, ctx)
    if class_label is not None:
        if synthetic and all(x.class_label is None for x in synthetic):
            scope = {"class_label": class_label, "chosen": "given", "reason": (
                f"the synthetic images carry no class label: all {len(synthetic)} taken as "
                f"{class_label!r}")}
            class_warnings.append(scope["reason"])
        else:
            synthetic = [x for x in synthetic if x.class_label == class_label]
    size = square_size(synthetic) if syn_kind in SYNTHETIC_KINDS else None
    real, real_kind = load_ref(real_ref, ctx, class_label, size=size)
    if class_label is not None and (not real or not synthetic):
        check_class(ctx, class_label, {"real": real_ref, "synthetic": synthetic_ref})
    if class_label is None:
        class_label, scope, warning = match_class(real, synthetic)
        if class_label is not None:
            real = [x for x in real if x.class_label == class_label]
        if warning:
            class_warnings.append(warning)
    warnings: list[str] = []
    geometry: dict[str, Any]
    if real_kind == "dataset" and size is not None:
        froms = [str(x.meta.get("preprocessed", {}).get("from")) for x in real]
        geometry = {"mode": "preprocessed", "size": size, "rule": PREPROCESS_RULE,
                    "stored_copies": froms.count("stored"), "computed": froms.count("computed")}
    elif real_kind == "dataset":
        geometry = {"mode": "original", "reason": (
            "the synthetic images are not all squares of one size, so there is no generator "
            "geometry to match")}
        if syn_kind in SYNTHETIC_KINDS:
            warnings.append("real dataset scored at its original geometry: the synthetic images "
                            "are not all squares of one size (FID/KID, mask areas and "
                            "memorisation SSIM compare different geometries)")
    else:
        geometry = {"mode": "as given", "reason": f"the real set is a {real_kind} folder"}
    info = {"real_ref": real_ref, "synthetic_ref": synthetic_ref, "real_kind": real_kind,
            "synthetic_kind": syn_kind, "real_geometry": geometry,
            "warnings": [*warnings, *class_warnings],
            "class_label": class_label}
    if scope is not None:
        info["class_scope"] = scope
    return real, synthetic, info


def match_class(real: list[ImageSample], synthetic: list[ImageSample]
                ) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """(class to score, ``class_scope`` for the provenance, warning) when no class was asked
    for. A synthetic set of one known class scored against a real set of several is scored
    against the real images of that class only (comparing benign samples with benign and
    malignant images would count the missing class as a fidelity gap); a synthetic set
    without class labels, or of a class the real set lacks, is scored against every real
    image with a warning saying so."""
    syn_labels = {x.class_label for x in synthetic}
    real_labels = {x.class_label for x in real} - {None}
    if len(syn_labels) == 1 and None not in syn_labels:
        (label,) = syn_labels
        assert label is not None
        if label in real_labels and len(real_labels) > 1:
            kept = sum(x.class_label == label for x in real)
            reason = (f"every synthetic image is {label!r} and the real set has several classes "
                      f"({class_list(real)}): scored against its {kept} {label!r} images only, "
                      f"the {len(real) - kept} of other classes left out; pass --class to "
                      "choose")
            return label, {"class_label": label, "chosen": "automatically",
                           "reason": reason}, None
        if real_labels and label not in real_labels:
            return None, None, (f"every synthetic image is {label!r} but the real set has no "
                                f"{label!r} images ({class_list(real)}): scored against every "
                                "real image")
    elif None in syn_labels and len(real_labels) > 1:
        n = sum(x.class_label is None for x in synthetic)
        some = "the" if n == len(synthetic) else f"{n} of the {len(synthetic)}"
        return None, None, (f"{some} synthetic images carry no class label: scored as one set "
                            f"against every real image ({class_list(real)}); pass --class C "
                            "when the synthetic set is all one class")
    return None, None, None


def score_refs(ctx: AppContext, real_ref: str, synthetic_ref: str,
               class_label: str | None = None, options: ScoreOptions | None = None,
               metrics_settings: MetricsSettings | None = None) -> dict[str, Any]:
    """Load both references (:func:`load_sets`) and score them; the result's provenance says
    what was loaded and at which geometry."""
    ms = metrics_settings or MetricsSettings()
    real, synthetic, info = load_sets(ctx, real_ref, synthetic_ref, class_label)
    results = score_sets(real, synthetic, options or ms.options(), store=ctx.store,
                         cache_dir=ms.resolved_cache_dir(ctx.settings.home),
                         class_label=info.pop("class_label"))
    results["warnings"] = [*info.pop("warnings"), *results.get("warnings", [])]
    results["provenance"] = {**results.get("provenance", {}), **info}
    return results


def run_metrics(ctx: AppContext, real_ref: str, synthetic_ref: str,
                class_label: str | None = None, options: ScoreOptions | None = None,
                job_id: str | None = None, metrics_settings: MetricsSettings | None = None
                ) -> MetricRun:
    """Score ``synthetic_ref`` (folder or generation run id) against ``real_ref`` (folder or
    dataset id) and store a MetricRun. With a ``job_id`` the call is idempotent: a finished run
    of that job is returned as is (bus redelivery). A :func:`known_failure` (bad input,
    non-finite result, missing weights) leaves a ``failed`` run with the reason and re-raises;
    anything else is recorded as an internal error and re-raised."""
    ms = metrics_settings or MetricsSettings()
    opts = options or ms.options()
    with ctx.sessions() as s:
        run = None
        if job_id is not None:
            run = s.scalars(select(MetricRun).where(MetricRun.job_id == job_id)).first()
            if run is not None and run.status == "done":
                s.expunge(run)
                return run
        if run is None:
            run = MetricRun(job_id=job_id, real_ref=real_ref, synthetic_ref=synthetic_ref,
                            class_label=class_label, status="running")
            s.add(run)
        else:
            run.status, run.error = "running", None
        s.commit()
        run_id = run.id
    try:
        results = score_refs(ctx, real_ref, synthetic_ref, class_label, opts, ms)
    except Exception as exc:
        known = known_failure(exc)
        _finish(ctx, run_id, "failed",
                error=known[1] if known else f"internal error: {exc!r}")
        raise
    prov = dict(results.get("provenance", {}))
    return _finish(ctx, run_id, "done", results=results, provenance=prov,
                   class_label=results.get("class_label"))


def _finish(ctx: AppContext, run_id: str, status: str, *, error: str | None = None,
            results: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
            class_label: str | None = None) -> MetricRun:
    with ctx.sessions() as s:
        run = s.get(MetricRun, run_id)
        assert run is not None
        run.status = status
        if class_label is not None:  # the class scored, also when chosen automatically
            run.class_label = class_label
        run.error = error
        if results is not None:
            run.results = results
        if provenance is not None:
            run.provenance = provenance
        run.finished_at = datetime.now(UTC)
        s.commit()
        s.refresh(run)
        s.expunge(run)
        return run
