"""The distributed transport: the same ``Transport`` calls as the embedded one, answered by the
four services over HTTP. Long work (train, generate, metrics, classify) is queued by the services
as JetStream jobs; this module submits each job and polls its job endpoint until it is done,
printing progress as it changes.

Two things stay in the pipeline process, by design:

* **Import** writes the dataset straight into the shared Postgres and the shared file store
  (``SONOAUDIT_STORE_DIR`` must name the same folder — a shared volume — for the pipeline and all
  services). The dataset is a folder on the operator's machine; uploading it through a service
  would copy every image twice for no gain in safety, and the importer is idempotent either way.
* **Agreement and report** read the study from Postgres (the runner does that for both
  transports); they are quick, in-memory statistics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from sonoaudit.context import AppContext
from sonoaudit.pipeline.transport import StudyHandle

Echo = Callable[[str], None]
DONE, FAILED = "done", "failed"


class ServiceError(RuntimeError):
    """A service answered with an error, or could not be reached; the message names both."""


class DistributedTransport:
    name = "distributed"

    def __init__(self, ctx: AppContext, echo: Echo = print,
                 client: httpx.Client | None = None) -> None:
        s = ctx.settings
        self.ctx = ctx
        self.echo = echo
        self.urls = {"generator": s.generator_url.rstrip("/"),
                     "metrics": s.metrics_url.rstrip("/"),
                     "classifier": s.classifier_url.rstrip("/"),
                     "raters": s.raters_url.rstrip("/")}
        self.poll_s = s.job_poll_s
        self.job_timeout_s = s.job_timeout_s
        # Generation or scoring answered inline can take minutes on a CPU.
        self.http = client or httpx.Client(timeout=httpx.Timeout(30.0, read=1800.0))
        self._admin_tokens: dict[str, str] = {}
        self.get_attempts = 5

    # -- plumbing ---------------------------------------------------------------------------
    def _call(self, method: str, service: str, path: str, *, ok: tuple[int, ...] = (200,),
              token: str | None = None, retry: bool = True, **kwargs: Any) -> tuple[int, Any]:
        url = self.urls[service] + path
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            r = self._send(method, url, headers, kwargs, retry)
        except httpx.HTTPError as exc:
            raise ServiceError(
                f"cannot reach the {service} service at {url} ({exc!r}); is it running, and is "
                f"SONOAUDIT_{service.upper()}_URL right?") from exc
        if r.status_code not in ok:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ServiceError(f"{service} {method} {path}: HTTP {r.status_code}: "
                               f"{str(detail)[:2000]}")
        return r.status_code, r.json() if r.content else None

    def _send(self, method: str, url: str, headers: dict[str, str] | None,
              kwargs: dict[str, Any], retry: bool) -> httpx.Response:
        # GETs are retried: a busy service may close a kept-alive connection just as the next
        # poll arrives (connection reset), and a restarted one comes back. POSTs are not (a
        # retried POST could queue the same job twice).
        attempts = self.get_attempts if method == "GET" and retry else 1
        for attempt in range(1, attempts + 1):
            try:
                return self.http.request(method, url, headers=headers, **kwargs)
            except httpx.TransportError:
                if attempt == attempts:
                    raise
                time.sleep(min(1.0 * attempt, 5.0))
        raise AssertionError("unreachable")

    def check_services(self) -> None:
        """Fail early, naming the service, when one is down or not ready."""
        for service in self.urls:
            self._call("GET", service, "/readyz", retry=False)

    def _wait(self, service: str, path: str, what: str) -> dict[str, Any]:
        """Poll a job endpoint until the job is done (its view) or failed (ServiceError)."""
        start = time.monotonic()
        last = ""
        while True:
            _, view = self._call("GET", service, path)
            status = view.get("status")
            line = self._progress_line(view)
            if line != last:
                self.echo(f"    {what}: {line} ({time.monotonic() - start:.0f} s)")
                last = line
            if status == DONE:
                return dict(view)
            if status == FAILED:
                raise ServiceError(f"{what} failed ({service} {path}): {view.get('error')}")
            if time.monotonic() - start > self.job_timeout_s:
                raise ServiceError(f"{what}: still {status} after {self.job_timeout_s:.0f} s "
                                   f"({service} {path}); SONOAUDIT_JOB_TIMEOUT_S raises this")
            time.sleep(self.poll_s)

    @staticmethod
    def _progress_line(view: dict[str, Any]) -> str:
        status = str(view.get("status"))
        training = view.get("training") or {}
        if training.get("step"):
            return f"{status}, step {training['step']} (loss {training.get('loss', 0):.4f})"
        total, done = view.get("total"), view.get("done")
        if total:
            return f"{status}, {done or 0}/{total}"
        return status

    # -- capabilities -----------------------------------------------------------------------
    def import_dataset(self, path: Path) -> str:
        from sonoaudit.datasets.importer import import_dataset

        return import_dataset(self.ctx, path).id

    def train(self, dataset_id: str, class_label: str, profile: str, seed: int,
              steps: int | None, out_dir: Path,
              options: dict[str, str] | None = None) -> str:
        # out_dir is the embedded transport's; the generator trains into its own volume.
        _, job = self._call("POST", "generator", "/train", ok=(202,), json={
            "dataset_id": dataset_id, "class_label": class_label, "profile": profile,
            "seed": seed, "steps": steps, **(options or {})})
        view = self._wait("generator", f"/train/jobs/{job['job_id']}",
                          f"train {class_label} (job {job['job_id']})")
        return str(view["result"]["model_id"])

    def generate(self, model_id: str, n: int, sampler: str, steps: int | None, seed: int,
                 out_dir: Path) -> str:
        code, body = self._call("POST", "generator", "/generate", ok=(200, 202), json={
            "model_id": model_id, "n": n, "sampler": sampler, "steps": steps, "seed": seed})
        if code == 200:  # small requests are answered inline
            return str(body["generation_run_id"])
        view = self._wait("generator", f"/jobs/{body['job_id']}",
                          f"generate {n} (job {body['job_id']})")
        return str(view["result"]["generation_run_id"])

    def metrics(self, real_ref: str, synthetic_ref: str, class_label: str | None) -> str:
        req = {"real_ref": real_ref, "synthetic_ref": synthetic_ref, "class_label": class_label}
        code, body = self._call("POST", "metrics", "/metrics", ok=(200, 202, 409),
                                json={**req, "background": True})
        if code == 409:  # the metrics service runs without NATS: score inline
            _, run = self._call("POST", "metrics", "/metrics", json=req)
            return str(run["id"])
        view = self._wait("metrics", f"/metrics/jobs/{body['job_id']}",
                          f"metrics {class_label or 'all'} (job {body['job_id']})")
        if view.get("run") is not None:
            return str(view["run"]["id"])
        return str(view["result"]["metric_run_id"])

    def llm_problem(self, backend: str | None) -> str | None:
        params = {"backend": backend} if backend else None
        _, body = self._call("GET", "classifier", "/classify/backend-status", params=params)
        return None if body["ready"] else str(body["problem"])

    def classify(self, image_ids: list[str], backend: str | None, condition: str,
                 replicates: int) -> dict[str, Any]:
        _, job = self._call("POST", "classifier", "/classify/batch", ok=(202,), json={
            "image_ids": image_ids, "backend": backend, "condition": condition,
            "replicates": replicates})
        self._wait("classifier", f"/jobs/{job['job_id']}", f"classify (job {job['job_id']})")
        _, rows = self._call("GET", "classifier", f"/jobs/{job['job_id']}/results")
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        return {"n_results": len(rows), "status_counts": counts, "job_id": job["job_id"]}

    def create_study(self, name: str, real_ids: list[str], synthetic_ids: list[str],
                     seed: int, n_repeats: int = 0) -> StudyHandle:
        from sonoaudit_raters.study.settings import StudySettings

        creator = StudySettings().creator_token
        if creator is None or not creator.get_secret_value():
            raise ServiceError("creating the study over HTTP needs the raters service's creator "
                               "token: set SONOAUDIT_STUDY_CREATOR_TOKEN for the pipeline too")
        _, body = self._call("POST", "raters", "/study/admin/studies", ok=(201,),
                             token=creator.get_secret_value(), json={
                                 "name": name, "real_image_ids": real_ids,
                                 "synthetic_image_ids": synthetic_ids, "seed": seed,
                                 "config": {"n_repeats": n_repeats}})
        self._admin_tokens[body["study_id"]] = body["admin_token"]
        return StudyHandle(str(body["study_id"]), str(body["admin_token"]))

    def attach_study(self, handle: StudyHandle) -> None:
        """An existing study is reused: its admin token (from reader-links.txt) enrols readers."""
        if handle.admin_token:
            self._admin_tokens[handle.study_id] = handle.admin_token

    def _admin(self, study_id: str) -> str:
        token = self._admin_tokens.get(study_id)
        if token is None:
            raise ServiceError(f"no admin token for study {study_id} in this run (it is only "
                               "returned when the study is created, and kept in the "
                               "reader-links.txt of the run's output folder)")
        return token

    def add_reader(self, study_id: str, name: str, simulated: bool = False) -> str:
        if simulated:
            raise ServiceError("simulated readers are added with simulate_panel, not add_reader")
        _, body = self._call("POST", "raters", f"/study/admin/{study_id}/readers", ok=(201,),
                             token=self._admin(study_id), json={"name": name})
        return str(body["token"])

    def simulate_panel(self, study_id: str, n_readers: int, accuracy: float,
                       seed: int) -> list[str]:
        _, body = self._call("POST", "raters", f"/study/admin/{study_id}/simulate-panel",
                             ok=(201,), token=self._admin(study_id), json={
                                 "n_readers": n_readers, "accuracy": accuracy, "seed": seed})
        return [str(i) for i in body["reader_ids"]]

    def reader_link(self, base_url: str, token: str) -> str:
        from sonoaudit_raters.study.setup import reader_link

        return reader_link(base_url, token)

    def close(self) -> None:
        self.http.close()
