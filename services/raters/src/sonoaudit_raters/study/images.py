"""Images as readers receive them: re-encoded 8-bit grayscale PNGs with no metadata, at the
study's display size, and the mask as a transparent outline overlay of the same size."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from scipy import ndimage
from sonoaudit.filestore import FileStore

from sonoaudit_raters.study.config import DisplayConfig

OUTLINE_RGBA = (255, 214, 0, 255)  # amber: visible on grayscale, not a clinical colour code


def _fit(
    img: PILImage.Image, display: DisplayConfig, resample: PILImage.Resampling
) -> PILImage.Image:
    if display.fit == "none" or display.size is None:
        return img
    size = display.size
    if display.fit == "stretch":
        return img.resize((size, size), resample)
    scale = size / max(img.size)
    inner = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                       resample)
    canvas = PILImage.new(img.mode, (size, size), 0)
    canvas.paste(inner, ((size - inner.width) // 2, (size - inner.height) // 2))
    return canvas


def _png(img: PILImage.Image) -> bytes:
    buf = io.BytesIO()
    # No pnginfo, ICC profile or EXIF is passed, so nothing but pixels is written.
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


@lru_cache(maxsize=256)
def _render_image(root: str, rel: str, size: int | None, fit: str) -> bytes:
    with PILImage.open(FileStore(Path(root)).path(rel)) as src:
        gray = src.convert("L")
    return _png(_fit(gray, DisplayConfig(size=size, fit=fit), PILImage.Resampling.BILINEAR))


@lru_cache(maxsize=256)
def _render_outline(root: str, rel: str, size: int | None, fit: str, thickness: int) -> bytes:
    with PILImage.open(FileStore(Path(root)).path(rel)) as src:
        mask = src.convert("L")
    mask = _fit(mask, DisplayConfig(size=size, fit=fit), PILImage.Resampling.NEAREST)
    inside = np.asarray(mask) > 0
    edge = inside & ~ndimage.binary_erosion(inside, iterations=thickness, border_value=0)
    rgba = np.zeros((*inside.shape, 4), dtype=np.uint8)
    rgba[edge] = OUTLINE_RGBA
    return _png(PILImage.fromarray(rgba))


def render_image(store: FileStore, rel: str, display: DisplayConfig) -> bytes:
    return _render_image(str(store.root), rel, display.size, display.fit)


def render_mask_outline(store: FileStore, rel: str, display: DisplayConfig,
                        thickness: int = 2) -> bytes:
    return _render_outline(str(store.root), rel, display.size, display.fit, thickness)
