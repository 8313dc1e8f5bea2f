"""ONNX export of the denoiser (dynamic batch) and an ONNX Runtime backend for the same samplers.

The graph takes ``x`` (B, C, H, W) float32 and ``t`` (B,) int64 (and, for a class-conditional
model, ``class_labels`` (B,) int64) and returns the prediction; the sampling loop (diffusers
schedulers) stays in Python, so every sampler works on either backend.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sonoaudit_generator.checkpoint import Checkpoint, load_weights
from sonoaudit_generator.denoiser import build_denoiser

OPSET = 17


CLASS_INPUT = "class_labels"


class _Export(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        out: Tensor = self.net(x, t)
        return out


class _ExportConditional(_Export):
    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor) -> Tensor:  # type: ignore[override]
        out: Tensor = self.net(x, t, class_labels)
        return out


def export_module(net: torch.nn.Module, size: int, channels: int, path: Path, *,
                  num_classes: int = 0) -> Path:
    """Export ``net`` (called as ``net(x, t)``, or ``net(x, t, class_labels)`` when
    ``num_classes`` > 0) with a dynamic batch axis; written atomically."""
    import onnx
    from sonoaudit.filestore import atomic_write_bytes

    net = copy.deepcopy(net).eval().float().cpu()  # leave the caller's module where it is
    x = torch.zeros(2, channels, size, size)
    t = torch.tensor([1, 2], dtype=torch.long)
    args: tuple[Tensor, ...] = (x, t)
    names = ["x", "t"]
    wrapper: torch.nn.Module = _Export(net)
    if num_classes > 0:
        args = (x, t, torch.tensor([0, num_classes - 1], dtype=torch.long))
        names.append(CLASS_INPUT)
        wrapper = _ExportConditional(net)
    tmp = path.with_name(f".{path.name}.export")
    with torch.no_grad():
        torch.onnx.export(
            wrapper, args, str(tmp), input_names=names, output_names=["out"],
            dynamic_axes={**{n: {0: "batch"} for n in names}, "out": {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )
    model = onnx.load(str(tmp))
    onnx.checker.check_model(model)
    tmp.unlink(missing_ok=True)
    atomic_write_bytes(path, model.SerializeToString())
    return path


def _origin(ckpt: Checkpoint) -> dict[str, Any]:
    """What an export is made from: the checkpoint's step and the sha256 of its EMA weights."""
    return {"step": ckpt.step, "ema_sha256": ckpt.digests.get("ema.safetensors"), "opset": OPSET}


def export_onnx(ckpt: Checkpoint, path: Path) -> Path:
    """Export the EMA weights of a checkpoint; a JSON sidecar says which checkpoint it came from
    (folder, step, sha256 of the EMA weights), so a stale export can be recognised."""
    from sonoaudit.filestore import atomic_write_bytes

    net = build_denoiser(ckpt.profile.model)
    load_weights(net, ckpt.ema, ckpt.path, ckpt.profile.model)
    sidecar = path.with_suffix(".json")
    sidecar.unlink(missing_ok=True)  # never a new model beside the old model's sidecar
    n_cls = ckpt.profile.model.num_classes
    export_module(net, ckpt.profile.model.sample_size, ckpt.profile.model.in_channels, path,
                  num_classes=n_cls)
    inputs = {"x": "float32 (B,C,H,W)", "t": "int64 (B,)"}
    extra: dict[str, Any] = {}
    if n_cls > 0:
        inputs[CLASS_INPUT] = f"int64 (B,) in 0..{n_cls - 1}"
        extra["class_names"] = ckpt.class_names_or_indices()
    atomic_write_bytes(sidecar, json.dumps(
        {"checkpoint": str(ckpt.path), **_origin(ckpt), "inputs": inputs, **extra},
        indent=2).encode())
    return path


def export_is_current(ckpt: Checkpoint, path: Path) -> bool:
    """Whether ``path`` is an export of exactly these weights: the model file and its sidecar
    exist and the sidecar's step, EMA sha256 and opset are the checkpoint's."""
    sidecar = path.with_suffix(".json")
    if not (path.is_file() and sidecar.is_file()):
        return False
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return False
    want = _origin(ckpt)
    return (isinstance(info, dict) and want["ema_sha256"] is not None
            and all(info.get(k) == v for k, v in want.items()))


def ensure_onnx(ckpt: Checkpoint, path: Path) -> Path:
    """The ONNX export of this checkpoint at ``path``: reused when current, else (re)exported."""
    if not export_is_current(ckpt, path):
        export_onnx(ckpt, path)
    return path


def providers() -> list[str]:
    """CUDA when ONNX Runtime has it, else CPU."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


class OrtBackend:
    """ONNX Runtime session; takes and returns host tensors (the loop runs on the CPU)."""

    name = "onnx"
    device = torch.device("cpu")

    def __init__(self, path: Path, *, threads: int | None = None,
                 class_label: int | None = None) -> None:
        import onnxruntime as ort

        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: ONNX model not found (run `sonoaudit export-onnx`)")
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session: Any = ort.InferenceSession(str(path), sess_options=opts,
                                                 providers=providers())
        self.conditional = CLASS_INPUT in {i.name for i in self.session.get_inputs()}
        if self.conditional and class_label is None:
            raise ValueError(f"{path}: the model is class-conditional; pass class_label")
        if not self.conditional and class_label is not None:
            raise ValueError(f"{path}: the model is not class-conditional; it takes no class")
        self.class_label = class_label

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        feed = {"x": x.detach().cpu().float().numpy(), "t": t.detach().cpu().long().numpy()}
        if self.class_label is not None:
            feed[CLASS_INPUT] = np.full((x.shape[0],), self.class_label, dtype=np.int64)
        out = self.session.run(["out"], feed)[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)
