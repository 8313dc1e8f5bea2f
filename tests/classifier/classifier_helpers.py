"""Helpers for the classifier tests (a uniquely named module: importable from any test file)."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sonoaudit.context import AppContext
from sonoaudit.db.models import Image
from sonoaudit.db.session import session_scope


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


def register_images(ctx: AppContext,
                    pairs: Sequence[tuple[str, bytes, bytes | None, str]]) -> list[str]:
    """Put (name, image bytes, mask bytes, class) into the store; return the new image ids."""
    ids = []
    with session_scope(ctx.sessions) as s:
        for name, data, mask, label in pairs:
            sha, rel = ctx.store.put(data)
            mask_sha, mask_rel = ctx.store.put(mask) if mask else (None, None)
            w, h = PILImage.open(io.BytesIO(data)).size
            img = Image(sha256=sha, mask_sha256=mask_sha, source="real", class_label=label,
                        name=name, path=rel, mask_path=mask_rel, width=w, height=h)
            s.add(img)
            s.flush()
            ids.append(img.id)
    return ids


def synthetic_pngs(n: int, seed: int = 0, size: int = 32) -> list[tuple[str, bytes, bytes, str]]:
    """n distinct small grayscale PNGs with a square mask each."""
    rng = np.random.default_rng(seed)
    out = []
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[8:24, 8:24] = 255
    mbuf = io.BytesIO()
    PILImage.fromarray(mask).save(mbuf, format="PNG")
    for i in range(n):
        arr = rng.integers(0, 256, (size, size), dtype=np.uint8)
        buf = io.BytesIO()
        PILImage.fromarray(arr).save(buf, format="PNG")
        out.append((f"synthetic_{i:04d}", buf.getvalue(), mbuf.getvalue(), "benign"))
    return out


def write_prompt_version(folder: Path, version: str, system: str) -> Path:
    """A user prompt version: the packaged v1 files with another system text."""
    from importlib import resources

    folder.mkdir(parents=True, exist_ok=True)
    packaged = resources.files("sonoaudit_classifier") / "prompts"
    for name in ("system", "task", "repair", "condition-image", "condition-outline",
                 "condition-side_by_side"):
        text = system if name == "system" else (packaged / f"v1-{name}.txt").read_text()
        (folder / f"{version}-{name}.txt").write_text(text)
    return folder
