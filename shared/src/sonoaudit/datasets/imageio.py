"""Reading images as 8-bit grey and masks as binary, once, with the rules written down here.

Grey conversion (recorded per image as ``grey_conversion``):
  - ``L`` (8-bit grey): used as is (``"none"``);
  - ``1`` (1-bit): 0/255 (``"1bit"``);
  - ``I;16``/``I`` (16-bit): divided by 257, rounded (``"16bit/257"``);
  - ``RGB``/``RGBA``/``P``/``LA``: alpha dropped, then ITU-R 601-2 luma as Pillow's ``convert("L")``
    computes it (``"luma601"``); ultrasound RGB exports are grey replicated to three channels, for
    which this is exact.

Masks: every channel but alpha is reduced by the per-pixel maximum (so a red or green lesion
drawing counts, which luma would dim), alpha multiplies in when present. A mask whose values are
only {0, 1} uses 1 as lesion (some exports store 0/1 in 8 bits); otherwise a pixel is lesion when
its value is >= ``MASK_THRESHOLD`` (128 of 255). Pixels strictly between ``NEAR_BLACK`` and
``NEAR_WHITE`` are "intermediate"; a mask with more than ``MASK_NONBINARY_TOLERANCE`` of its
pixels intermediate is refused as non-binary (JPEG-damaged or soft masks), so a threshold choice
never silently decides a lesion boundary. Several masks of one image are OR-merged.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MASK_THRESHOLD = 128
NEAR_BLACK = 16
NEAR_WHITE = 239
MASK_NONBINARY_TOLERANCE = 0.01  # fraction of pixels

# Big enough for any ultrasound frame; stops decompression bombs from eating the machine.
MAX_PIXELS = 50_000_000


class ImageReadError(ValueError):
    """The file is missing, not an image, or cannot be decoded."""


def open_bytes(data: bytes) -> Image.Image:
    """Decode image bytes fully (a truncated file fails here, not later)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageReadError(
                    f"image is {im.width}x{im.height}, larger than {MAX_PIXELS} px")
            im.load()
            return im.copy()
    except UnidentifiedImageError as exc:
        raise ImageReadError("not an image file (cannot identify an image format)") from exc
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"unreadable image ({exc})") from exc


def _open(path: Path) -> Image.Image:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ImageReadError("file not found") from exc
    except OSError as exc:
        raise ImageReadError(f"cannot read file ({exc})") from exc
    return open_bytes(data)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) after a full decode (so a corrupt file raises here)."""
    im = _open(path)
    return im.width, im.height


def to_grey(im: Image.Image) -> tuple[np.ndarray, str]:
    """An 8-bit grey array and the name of the conversion used (see the module doc)."""
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.uint8).copy(), "none"
    if mode == "1":
        return np.asarray(im, dtype=bool).astype(np.uint8) * 255, "1bit"
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        if mode == "I" and arr.max(initial=0) <= 255:
            return arr.clip(0, 255).astype(np.uint8), "none"
        return np.rint(arr.clip(0, 65535) / 257.0).astype(np.uint8), "16bit/257"
    if mode == "F":
        raise ImageReadError("floating-point images are not supported; export 8-bit grey PNG")
    rgb = im.convert("RGB")  # drops alpha, expands palettes
    return np.asarray(rgb.convert("L"), dtype=np.uint8).copy(), "luma601"


def read_grey(path: Path) -> tuple[np.ndarray, str]:
    """The image at ``path`` as uint8 HxW and the grey conversion applied."""
    return to_grey(_open(path))


def mask_levels(im: Image.Image) -> np.ndarray:
    """One uint8 channel per the mask rules: max over colour channels, alpha multiplied in."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=bool).astype(np.uint8) * 255
    if mode == "L":
        return np.asarray(im, dtype=np.uint8)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im).astype(np.int64)
        if arr.max(initial=0) > 255:
            arr = np.rint(arr / 257.0).astype(np.int64)
        return arr.clip(0, 255).astype(np.uint8)
    if mode == "P":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("LA", "RGBA", "PA"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
        level = rgba[..., :3].max(axis=-1)
        return ((level * rgba[..., 3] + 127) // 255).astype(np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).max(axis=-1)


def binarize(levels: np.ndarray) -> tuple[np.ndarray, float]:
    """(bool mask, fraction of intermediate pixels) for one mask channel."""
    if levels.size and int(levels.max()) <= 1:
        return levels.astype(bool), 0.0
    intermediate = (levels > NEAR_BLACK) & (levels < NEAR_WHITE)
    frac = float(intermediate.mean()) if levels.size else 0.0
    return levels >= MASK_THRESHOLD, frac


def read_mask(path: Path) -> tuple[np.ndarray, float]:
    """(bool HxW mask, intermediate fraction) of one mask file."""
    return binarize(mask_levels(_open(path)))


def merge_masks(paths: tuple[Path, ...] | list[Path], shape: tuple[int, int]) -> np.ndarray:
    """OR of the masks at ``paths``; all-False of ``shape`` when there are none."""
    out = np.zeros(shape, dtype=bool)
    for p in paths:
        m, _ = read_mask(p)
        if m.shape != shape:
            raise ImageReadError(
                f"mask {p} is {m.shape[1]}x{m.shape[0]} but its image is {shape[1]}x{shape[0]}"
            )
        out |= m
    return out


def png_bytes(arr: np.ndarray) -> bytes:
    """PNG of a uint8 grey or bool array (bool → 0/255 8-bit, readable everywhere)."""
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 or bool array, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def is_8bit_grey_png(path: Path) -> bool:
    """True when the file is already a PNG in mode ``L`` (stored byte-identical on import)."""
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.mode == "L"
    except (OSError, UnidentifiedImageError):
        return False
