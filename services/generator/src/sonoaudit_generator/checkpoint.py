"""Checkpoints: safetensors weights (raw and EMA), JSON config, training state; atomic and verified.

A checkpoint is one folder; ``checkpoint.json`` in it lists the sha256 of every other file, and
loading checks those hashes, so a folder damaged on disk is refused with the name of the bad file
instead of loading garbage.

Saving is atomic for the folder as a whole: every file goes into a sibling ``.<name>.new`` folder
(``checkpoint.json`` last, everything fsynced), then the old folder is renamed to ``.<name>.old``,
the new one into place, and the old one deleted. A crash while writing leaves the previous folder
untouched; a crash between the two renames (no ``<name>`` at all) is repaired on the next load or
save, which puts back the complete new folder, or else the old one.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from sonoaudit.filestore import atomic_write_bytes, sha256_bytes

from sonoaudit_generator.config import ModelConfig, Profile

MANIFEST = "checkpoint.json"
FORMAT = "sonoaudit-ddpm/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or does not match what the caller asked for."""


@dataclass
class Checkpoint:
    path: Path
    profile: Profile
    class_label: str | None
    step: int
    weights: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    state: dict[str, Any]  # optimizer + loss curve (present only in training checkpoints)
    meta: dict[str, Any]
    digests: dict[str, str] = field(default_factory=dict)  # file name -> sha256 (checkpoint.json)
    # class-conditional models: the class of each label index (None: one model per class)
    class_names: list[str] | None = None

    @property
    def conditional(self) -> bool:
        return self.profile.model.num_classes > 0

    def class_names_or_indices(self) -> list[str]:
        """The classes a conditional model samples, by label index (``'0'``, ``'1'``… when it
        was trained without names)."""
        n = self.profile.model.num_classes
        return list(self.class_names) if self.class_names else [str(i) for i in range(n)]


def _state_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def save_checkpoint(
    path: Path,
    *,
    profile: Profile,
    class_label: str | None,
    step: int,
    weights: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    class_names: list[str] | None = None,
) -> Path:
    path = Path(path)
    if class_names is not None and len(class_names) != profile.model.num_classes:
        raise ValueError(f"class_names {class_names} must name each of the model's "
                         f"{profile.model.num_classes} classes")
    recover(path)
    new, old = _sibling(path, "new"), _sibling(path, "old")
    shutil.rmtree(new, ignore_errors=True)  # a save that died before its swap
    new.mkdir(parents=True)

    def blob(sd: dict[str, torch.Tensor]) -> bytes:
        return st_save({k: v.detach().cpu().contiguous() for k, v in sd.items()})

    files: dict[str, bytes] = {
        "model.safetensors": blob(weights),
        "ema.safetensors": blob(ema),
        "config.json": json.dumps(
            {"profile": profile.model_dump(mode="json"), "class_label": class_label,
             "class_names": class_names}, indent=2).encode(),
    }
    if state is not None:
        files["training_state.pt"] = _state_bytes(state)
    for name, data in files.items():
        atomic_write_bytes(new / name, data)
    manifest = {
        "format": FORMAT, "step": step, "class_label": class_label,
        "files": {name: sha256_bytes(data) for name, data in files.items()},
        "meta": meta or {},
    }
    atomic_write_bytes(new / MANIFEST, json.dumps(manifest, indent=2).encode())
    _fsync_dir(new)
    shutil.rmtree(old, ignore_errors=True)  # left by a save that died after its swap
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def recover(path: Path) -> None:
    """Repair a save that died between its two renames: ``path`` is missing but the complete new
    (or the previous) folder sits beside it. A no-op in every other case."""
    path = Path(path)
    if path.exists():
        return
    for kind in ("new", "old"):
        cand = _sibling(path, kind)
        if (cand / MANIFEST).is_file():
            os.replace(cand, path)
            return


def _read_verified(path: Path, name: str, digest: str) -> bytes:
    f = path / name
    if not f.is_file():
        raise CheckpointError(f"{f}: listed in {MANIFEST} but missing")
    data = f.read_bytes()
    if sha256_bytes(data) != digest:
        raise CheckpointError(
            f"{f}: sha256 does not match {MANIFEST} (file corrupt or from another checkpoint)"
        )
    return data


def has_checkpoint(path: Path) -> bool:
    """Whether ``path`` holds a finished checkpoint (after repairing an interrupted swap)."""
    recover(Path(path))
    return (Path(path) / MANIFEST).is_file()


def load_checkpoint(path: Path, *, with_state: bool = False) -> Checkpoint:
    path = Path(path)
    try:
        recover(path)
    except OSError:  # read-only store: report what is there
        pass
    mf = path / MANIFEST
    if not mf.is_file():
        raise CheckpointError(f"{mf}: not found; {path} is not a complete sonoaudit checkpoint")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{mf}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{mf}: format is not {FORMAT!r}")
    files = manifest.get("files", {})
    blobs = {name: _read_verified(path, name, digest) for name, digest in files.items()
             if with_state or name != "training_state.pt"}
    try:
        cfg = json.loads(blobs["config.json"])
        prof = Profile.model_validate(cfg["profile"])
    except Exception as exc:
        raise CheckpointError(f"{path / 'config.json'}: invalid config ({exc})") from exc
    state: dict[str, Any] = {}
    if with_state:
        if "training_state.pt" not in blobs:
            raise CheckpointError(f"{path}: has no training_state.pt, cannot resume from it")
        state = torch.load(io.BytesIO(blobs["training_state.pt"]), weights_only=True)
    return Checkpoint(
        path=path, profile=prof, class_label=cfg.get("class_label"),
        step=int(manifest.get("step", 0)),
        weights=st_load(blobs["model.safetensors"]), ema=st_load(blobs["ema.safetensors"]),
        state=state, meta=manifest.get("meta", {}), digests=dict(files),
        class_names=cfg.get("class_names"),
    )


def load_weights(net: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path,
                 config: ModelConfig) -> None:
    """Strict load with an error that says which checkpoint and what differs."""
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(
            f"{source}: weights do not match the model config "
            f"(backbone={config.backbone}, widths={config.widths}, heights={config.heights}): "
            + " ".join(first)
        ) from exc
