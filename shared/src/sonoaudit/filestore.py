"""Content-addressed file store: bytes are kept under their sha256, written atomically."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FileStore:
    """``root/ab/cdef…<ext>``; the DB stores the relative path returned by :meth:`put`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def relpath(self, digest: str, ext: str = ".png") -> str:
        return f"{digest[:2]}/{digest}{ext}"

    def put(self, data: bytes, ext: str = ".png") -> tuple[str, str]:
        """Store bytes; return (sha256, relative path). Storing the same bytes twice is a no-op."""
        digest = sha256_bytes(data)
        rel = self.relpath(digest, ext)
        target = self.root / rel
        if not target.exists():
            atomic_write_bytes(target, data)
        return digest, rel

    def path(self, rel: str) -> Path:
        p = (self.root / rel).resolve()
        if not p.is_relative_to(self.root.resolve()):
            raise ValueError(f"path {rel!r} escapes the file store")
        return p

    def get(self, rel: str) -> bytes:
        return self.path(rel).read_bytes()

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()
