"""Metric runs in the results store: score two references and keep the result as a MetricRun."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sonoaudit.db.models import MetricRun
from sqlalchemy import select

from sonoaudit_metrics.config import MetricsSettings
from sonoaudit_metrics.samples import SampleError, load_ref
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


def run_metrics(ctx: AppContext, real_ref: str, synthetic_ref: str,
                class_label: str | None = None, options: ScoreOptions | None = None,
                job_id: str | None = None, metrics_settings: MetricsSettings | None = None
                ) -> MetricRun:
    """Score ``synthetic_ref`` (folder or generation run id) against ``real_ref`` (folder or
    dataset id) and store a MetricRun. With a ``job_id`` the call is idempotent: a finished run
    of that job is returned as is (bus redelivery). Bad input leaves a ``failed`` run with the
    reason and raises :class:`SampleError`."""
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
        real, real_kind = load_ref(real_ref, ctx, class_label)
        synthetic, syn_kind = load_ref(synthetic_ref, ctx, class_label)
        results = score_sets(real, synthetic, opts, store=ctx.store,
                             cache_dir=ms.resolved_cache_dir(ctx.settings.home),
                             class_label=class_label)
    except SampleError as exc:
        _finish(ctx, run_id, "failed", error=str(exc))
        raise
    except Exception as exc:
        _finish(ctx, run_id, "failed", error=f"internal error: {exc!r}")
        raise
    prov = dict(results.get("provenance", {}))
    prov.update(real_ref=real_ref, synthetic_ref=synthetic_ref, real_kind=real_kind,
                synthetic_kind=syn_kind)
    return _finish(ctx, run_id, "done", results=results, provenance=prov)


def _finish(ctx: AppContext, run_id: str, status: str, *, error: str | None = None,
            results: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None
            ) -> MetricRun:
    with ctx.sessions() as s:
        run = s.get(MetricRun, run_id)
        assert run is not None
        run.status = status
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
