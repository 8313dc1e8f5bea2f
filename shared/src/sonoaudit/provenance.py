"""What produced a result: package versions, platform, and a timestamp."""

from __future__ import annotations

import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

TRACKED_PACKAGES = (
    "sonoaudit",
    "torch",
    "diffusers",
    "onnxruntime",
    "torchmetrics",
    "numpy",
    "scipy",
    "google-genai",
    "krippendorff",
    "pillow",
)


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(**extra: Any) -> dict[str, Any]:
    """A provenance record; callers add model/seed/sampler/prompt-version fields via ``extra``."""
    return {
        "created_at": datetime.now(UTC).isoformat(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        **extra,
    }
