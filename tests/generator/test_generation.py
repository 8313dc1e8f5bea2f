"""Generation into the store: files, manifest, QC, idempotency, OOM fallback, ONNX parity."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gen_helpers import register_model
from PIL import Image as PILImage
from sonoaudit.context import AppContext
from sonoaudit.db.models import GenerationRun, Image, Job
from sonoaudit.db.session import session_scope
from sonoaudit_generator import generation as generation_mod
from sonoaudit_generator.checkpoint import load_checkpoint
from sonoaudit_generator.generation import GenerationError, generate, make_backend
from sonoaudit_generator.qc import mask_qc, summarise
from sonoaudit_generator.sampling import sample_batch
from sonoaudit_generator.schedules import sampler_scheduler
from sqlalchemy import func, select

torch.set_num_threads(1)


def test_mask_qc_counts_components_and_area() -> None:
    img = np.full((6, 6), 200, np.uint8)
    mask = np.zeros((6, 6), bool)
    mask[0:2, 0:2] = True  # 4 px
    mask[3, 3] = mask[4, 4] = True  # diagonal: one component under 8-connectivity
    img[mask] = 20
    q = mask_qc(img, mask)
    assert q["components"] == 2 and q["lesion_area_px"] == 6
    assert q["lesion_area_fraction"] == pytest.approx(6 / 36)
    assert q["largest_component_px"] == 4
    assert q["inside_darker"] is True and q["mean_inside"] == 20.0
    empty = mask_qc(img, np.zeros((6, 6), bool))
    assert empty["empty"] and empty["components"] == 0 and empty["inside_darker"] is None
    assert not q["full"] and not empty["full"]
    full_mask = np.ones((6, 6), bool)
    full_mask[0, :3] = False  # 33 of 36 px = 91.7 % >= 90 %
    full = mask_qc(img, full_mask)
    assert full["full"] and full["components"] == 1 and full["lesion_area_px"] == 33
    almost = full_mask.copy()
    almost[1, :1] = False  # 32 of 36 = 88.9 % < 90 %
    assert not mask_qc(img, almost)["full"]
    s = summarise([q, empty])
    assert s["n"] == 2 and s["empty"] == 1 and s["empty_fraction"] == 0.5
    assert s["full"] == 0
    assert summarise([q, full, empty, full])["full_fraction"] == 0.5
    assert s["components_histogram"] == {"0": 1, "2": 1}
    assert s["inside_darker_fraction"] == 1.0


def test_generate_writes_pairs_manifest_and_rows(sqlite_ctx: AppContext, tiny_checkpoint: Path,
                                                 tmp_path: Path) -> None:
    mid = register_model(sqlite_ctx, tiny_checkpoint)
    out = tmp_path / "out"
    run = generate(sqlite_ctx, mid, 3, "ddim", 4, seed=1, out_dir=out, batch_size=2,
                   progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n"] == 3 and manifest["sampler"] == "ddim" and manifest["steps"] == 4
    assert manifest["provenance"]["seed"] == 1 and manifest["provenance"]["model_id"] == mid
    assert manifest["provenance"]["packages"]["torch"]
    assert len(manifest["samples"]) == 3
    for sample in manifest["samples"]:
        img = np.array(PILImage.open(out / sample["image"]))
        mask = np.array(PILImage.open(out / sample["mask"]))
        assert img.shape == mask.shape == (16, 16) and img.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert sample["qc"]["lesion_area_px"] == int((mask > 0).sum())
    with session_scope(sqlite_ctx.sessions) as s:
        rows = list(s.scalars(select(Image).where(Image.generation_run_id == run.id)
                              .order_by(Image.sample_index)))
        assert [r.sample_index for r in rows] == [0, 1, 2]
        assert all(r.source == "synthetic" and r.class_label == "benign" for r in rows)
        stored = sqlite_ctx.store.get(rows[0].path)
        assert stored == (out / manifest["samples"][0]["image"]).read_bytes()
        assert s.get_one(GenerationRun, run.id).qc_summary["n"] == 3

    # the same seed gives the same pixels whatever the batch size
    again = generate(sqlite_ctx, mid, 3, "ddim", 4, seed=1, out_dir=tmp_path / "o2",
                     batch_size=3, progress=False)
    m2 = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert [x["sha256"] for x in m2["samples"]] == [x["sha256"] for x in manifest["samples"]]
    assert again.id != run.id


def test_same_job_twice_adds_no_duplicates(sqlite_ctx: AppContext, tiny_checkpoint: Path,
                                           tmp_path: Path) -> None:
    mid = register_model(sqlite_ctx, tiny_checkpoint)
    with session_scope(sqlite_ctx.sessions) as s:
        s.add(Job(id="job1", kind="generate", total=4))
    first = generate(sqlite_ctx, mid, 4, "ddim", 3, seed=0, job_id="job1", progress=False,
                     out_dir=tmp_path)
    second = generate(sqlite_ctx, mid, 4, "ddim", 3, seed=0, job_id="job1", progress=False,
                      out_dir=tmp_path)
    assert first.id == second.id
    with session_scope(sqlite_ctx.sessions) as s:
        n = s.scalar(select(func.count()).select_from(Image)
                     .where(Image.generation_run_id == first.id))
    assert n == 4
    with pytest.raises(GenerationError, match="other parameters"):
        generate(sqlite_ctx, mid, 5, "ddim", 3, seed=0, job_id="job1", progress=False)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"model_id": "nope"}, "unknown model"),
    ({"n": 0}, "n must be"),
    ({"steps": 101}, "steps must be in 1..100"),
    ({"sampler": "euler"}, "unknown sampler"),
])
def test_bad_generation_requests(sqlite_ctx: AppContext, tiny_checkpoint: Path,
                                 kwargs: dict[str, object], match: str) -> None:
    mid = register_model(sqlite_ctx, tiny_checkpoint)
    args: dict[str, object] = {"model_id": mid, "n": 2, "sampler": "ddim", "steps": 3}
    args.update(kwargs)
    with pytest.raises(GenerationError, match=match):
        generate(sqlite_ctx, progress=False, **args)  # type: ignore[arg-type]


def test_out_of_memory_halves_the_batch_with_identical_samples(
        sqlite_ctx: AppContext, tiny_checkpoint: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    mid = register_model(sqlite_ctx, tiny_checkpoint)
    ref = generate(sqlite_ctx, mid, 4, "ddim", 3, seed=2, batch_size=4, progress=False,
                   out_dir=tmp_path / "ref")
    real = generation_mod.make_backend
    batches: list[int] = []

    def small_memory(*a: object, **k: object) -> object:
        be = real(*a, **k)  # type: ignore[arg-type]

        def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            batches.append(x.shape[0])
            if x.shape[0] > 1:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return be(x, t)
        return call

    monkeypatch.setattr(generation_mod, "make_backend", small_memory)
    run = generate(sqlite_ctx, mid, 4, "ddim", 3, seed=2, batch_size=4, progress=False,
                   out_dir=tmp_path / "oom")
    assert batches[:2] == [4, 2] and set(batches[2:]) == {1}
    with session_scope(sqlite_ctx.sessions) as s:
        def shas(run_id: str) -> list[str]:
            return list(s.scalars(select(Image.sha256).where(Image.generation_run_id == run_id)
                                  .order_by(Image.sample_index)))
        assert shas(run.id) == shas(ref.id)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_onnx_runtime_matches_torch(tiny_checkpoint: Path, tmp_path: Path, sampler: str) -> None:
    """Same seed, same sampler: torch and ONNX Runtime agree to 1e-4 (max abs, in [-1, 1])."""
    pytest.importorskip("onnxruntime")
    import shutil

    ckpt_dir = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt_dir)
    ckpt = load_checkpoint(ckpt_dir)
    # a trained tiny net is close to zero output; randomise it so parity is a real check
    tb = make_backend(ckpt, "torch")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tb.net.parameters():  # type: ignore[attr-defined]
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    from sonoaudit_generator.onnx_backend import OrtBackend, export_module

    onnx_path = export_module(tb.net, 16, 2, tmp_path / "d.onnx")  # type: ignore[attr-defined]
    ob = OrtBackend(onnx_path)
    x = torch.randn(3, 2, 16, 16, generator=g)
    t = torch.tensor([0, 50, 99])
    direct = (tb(x, t) - ob(x, t)).abs().max().item()
    assert direct < 1e-4
    assert (tb(x, t) - torch.zeros(3, 2, 16, 16)).abs().max() > 1e-2  # not a trivial zero net

    def factory() -> object:
        return sampler_scheduler(ckpt.profile.schedule, sampler, 6)

    rt = sample_batch(tb, factory, seed=4, indices=[0, 1, 2], channels=2, size=16)
    ro = sample_batch(ob, factory, seed=4, indices=[0, 1, 2], channels=2, size=16)
    assert (rt.raw - ro.raw).abs().max().item() < 1e-4
    one = sample_batch(ob, factory, seed=4, indices=[1], channels=2, size=16)  # dynamic batch
    assert (one.raw[0] - rt.raw[1]).abs().max().item() < 1e-4
    assert io.BytesIO(onnx_path.read_bytes()).getbuffer().nbytes > 1000


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_generate_runs_on_cuda(sqlite_ctx: AppContext, tiny_checkpoint: Path, tmp_path: Path,
                               sampler: str) -> None:
    """`generate` picks CUDA when there is one and the whole reverse loop runs there."""
    assert make_backend(load_checkpoint(tiny_checkpoint)).device.type == "cuda"  # type: ignore[attr-defined]
    mid = register_model(sqlite_ctx, tiny_checkpoint)
    run = generate(sqlite_ctx, mid, 3, sampler, 100 if sampler == "ddpm" else 5, seed=1,
                   out_dir=tmp_path / "out", batch_size=2, progress=False)
    with session_scope(sqlite_ctx.sessions) as s:
        r = s.get_one(GenerationRun, run.id)
        assert r.status == "done" and r.qc_summary["n"] == 3
        assert s.scalar(select(func.count()).select_from(Image)
                        .where(Image.generation_run_id == run.id)) == 3


def test_onnx_export_is_redone_when_the_checkpoint_moved_on(
        tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A denoiser.onnx left from an earlier step (resume/retrain) is not reused: the sidecar's
    step and EMA sha256 are checked and a stale export is redone; a current one is reused."""
    pytest.importorskip("onnxruntime")
    import shutil

    from sonoaudit_generator import onnx_backend
    from sonoaudit_generator.checkpoint import save_checkpoint

    ckpt_dir = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt_dir)
    old = load_checkpoint(ckpt_dir, with_state=True)
    make_backend(old, "onnx")
    onnx_file = ckpt_dir / "denoiser.onnx"
    keep = tmp_path / "keep"
    keep.mkdir()
    for f in (onnx_file, onnx_file.with_suffix(".json")):
        shutil.copy(f, keep / f.name)
    exports: list[int] = []
    real_export = onnx_backend.export_onnx

    def counting(ck: object, path: Path) -> Path:
        exports.append(1)
        return real_export(ck, path)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx_backend, "export_onnx", counting)
    make_backend(load_checkpoint(ckpt_dir), "onnx")
    assert exports == []  # current: reused

    # training resumed: a later step with other EMA weights, and the old export still beside it
    g = torch.Generator().manual_seed(1)
    ema = {k: v + torch.randn(v.shape, generator=g) * 0.05 for k, v in old.ema.items()}
    save_checkpoint(ckpt_dir, profile=old.profile, class_label=old.class_label,
                    step=old.step + 5, weights=old.weights, ema=ema, state=old.state,
                    meta=old.meta)
    for f in keep.iterdir():
        shutil.copy(f, ckpt_dir / f.name)
    new = load_checkpoint(ckpt_dir)
    ob = make_backend(new, "onnx")
    assert exports == [1]
    side = json.loads(onnx_file.with_suffix(".json").read_text())
    assert side["step"] == old.step + 5 and side["ema_sha256"] == new.digests["ema.safetensors"]
    x = torch.randn(2, 2, 16, 16, generator=g)
    t = torch.tensor([5, 60])
    fresh = make_backend(new, "torch", device="cpu")(x, t)
    stale = make_backend(old, "torch", device="cpu")(x, t)
    assert (fresh - stale).abs().max().item() > 1e-2  # the two weight sets really differ
    assert (ob(x, t) - fresh).abs().max().item() < 1e-4

    # same step, other weights (a retrain into the same folder): the sha256 tells them apart
    side["ema_sha256"] = "0" * 64
    onnx_file.with_suffix(".json").write_text(json.dumps(side))
    make_backend(new, "onnx")
    assert exports == [1, 1]
    onnx_file.with_suffix(".json").unlink()  # no sidecar: cannot tell, so re-export
    make_backend(new, "onnx")
    assert exports == [1, 1, 1]
