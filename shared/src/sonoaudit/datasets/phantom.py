"""A synthetic breast-ultrasound phantom in the BUS-BRA layout, with exact lesion masks.

Not patient data: it exists so the demo and the tests run without the licensed datasets, and it
is labelled as phantom everywhere (``PHANTOM.txt`` at the root, ``Device`` column, and
``Dataset.is_phantom`` once imported).

Image model (linear echo amplitude, then speckle, then display compression):
  - skin line, a bright-ish subcutaneous layer with a wavy lower edge, glandular tissue with a
    slowly varying texture, a darker deep layer (chest wall);
  - a hypoechoic lesion, painted exactly where the mask is:
      benign: smooth oval, wider than tall, posterior acoustic enhancement;
      malignant: irregular, spiculated outline, taller than wide, posterior acoustic shadowing;
  - depth-dependent attenuation ``exp(-alpha * depth)``;
  - speckle: magnitude of a spatially correlated complex Gaussian field, i.e. Rayleigh
    distributed, multiplicative, normalised to mean 1;
  - display: power-law compression to 8 bits.
Each image uses its own generator seeded by (seed, case, view), so one image never depends on
how many others are written. Some cases get two views (``-l``/``-r``, same lesion, new speckle)
like BUS-BRA's dual-view captures, so patient-level splitting is exercised.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from sonoaudit.datasets.busbra import LABELS_FILE, PHANTOM_DEVICE, PHANTOM_MARKER, mask_name

PHANTOM_VERSION = 1
BUSBRA_COLUMNS = ("ID", "Case", "Histology", "Pathology", "BIRADS", "Device", "Width", "Height",
                  "Side", "BBOX")
DUAL_VIEW_EVERY = 4  # every 4th case has -l/-r views


@dataclass(frozen=True)
class Lesion:
    """Lesion geometry in normalised coordinates (x, depth in 0..1)."""

    cx: float
    cy: float
    sx: float  # horizontal scale of the polar outline
    sy: float  # vertical scale
    angle: float
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) for k = 2, 3, ...
    spikes: tuple[tuple[float, float, float], ...]  # (angle, amplitude, half-width)
    echo: float  # lesion amplitude relative to tissue
    posterior: float  # multiplier below the lesion: >1 enhancement, <1 shadowing


def _lesion(rng: np.random.Generator, malignant: bool) -> Lesion:
    if malignant:
        r0 = rng.uniform(0.09, 0.125)
        return Lesion(
            cx=rng.uniform(0.38, 0.62), cy=rng.uniform(0.42, 0.5),
            sx=r0 * rng.uniform(0.8, 0.95), sy=r0 * rng.uniform(1.3, 1.55),
            angle=rng.uniform(-0.15, 0.15),
            harmonics=tuple((rng.uniform(0.03, 0.08), rng.uniform(0, 2 * np.pi))
                            for _ in range(2, 7)),
            spikes=tuple((rng.uniform(0, 2 * np.pi), rng.uniform(0.25, 0.5),
                          rng.uniform(0.05, 0.09)) for _ in range(int(rng.integers(6, 11)))),
            echo=rng.uniform(0.18, 0.3),
            posterior=rng.uniform(0.3, 0.45),
        )
    a = rng.uniform(0.13, 0.2)
    return Lesion(
        cx=rng.uniform(0.38, 0.62), cy=rng.uniform(0.4, 0.52),
        sx=a, sy=a * rng.uniform(0.5, 0.7), angle=rng.uniform(-0.15, 0.15),
        harmonics=((rng.uniform(0.0, 0.04), rng.uniform(0, 2 * np.pi)),),
        spikes=(), echo=rng.uniform(0.12, 0.25), posterior=rng.uniform(1.6, 1.9),
    )


def _mirror(lesion: Lesion) -> Lesion:
    """The second view of a dual capture: same lesion, mirrored left-right."""
    return Lesion(
        cx=1.0 - lesion.cx, cy=lesion.cy, sx=lesion.sx, sy=lesion.sy, angle=-lesion.angle,
        # r'(phi) = r(pi - phi): cos(k(pi - phi) + ph) = cos(k phi - k pi - ph)
        harmonics=tuple((amp, -k * np.pi - ph)
                        for k, (amp, ph) in enumerate(lesion.harmonics, start=2)),
        spikes=tuple((np.pi - ang, amp, w) for ang, amp, w in lesion.spikes),
        echo=lesion.echo, posterior=lesion.posterior,
    )


def lesion_mask(lesion: Lesion, size: int) -> np.ndarray:
    """Exact binary mask: pixel centres inside the polar outline r(phi)."""
    c = (np.arange(size) + 0.5) / size
    dx = c[None, :] - lesion.cx
    dy = c[:, None] - lesion.cy
    cos, sin = np.cos(lesion.angle), np.sin(lesion.angle)
    u = (dx * cos + dy * sin) / lesion.sx
    v = (-dx * sin + dy * cos) / lesion.sy
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u)
    radius = np.ones_like(phi)
    for k, (amp, ph) in enumerate(lesion.harmonics, start=2):
        radius += amp * np.cos(k * phi + ph)
    for ang, amp, half_width in lesion.spikes:
        d = np.abs(np.angle(np.exp(1j * (phi - ang))))
        radius += amp * np.clip(1.0 - d / half_width, 0.0, None)
    mask: np.ndarray = rho <= radius
    return mask


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="reflect")
    std = field.std()
    return field / std if std > 0 else field


def render(lesion: Lesion, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image, bool mask) of one phantom frame."""
    depth = ((np.arange(size) + 0.5) / size)[:, None] * np.ones((1, size))
    scale = size / 128.0

    # Tissue layers: skin line, bright-ish subcutaneous layer with a wavy lower edge, glandular
    # tissue with horizontal layering and bright fibrous streaks, a darker deep layer.
    wave = gaussian_filter1d(rng.standard_normal(size), 10 * scale, mode="wrap")
    wave = wave / (np.abs(wave).max() + 1e-9) * 0.03
    sub_bottom = rng.uniform(0.16, 0.22) + wave[None, :]
    layered = gaussian_filter(rng.standard_normal((size, size)), (1.2 * scale, 10 * scale))
    layered /= layered.std() + 1e-12
    echo = 0.42 + 0.06 * layered + 0.03 * _smooth_noise(rng, size, 8 * scale)
    # Fibrous streaks (Cooper's ligaments) where the layered texture peaks.
    echo = np.where(layered > 1.8, 0.75, np.clip(echo, 0.05, None))
    echo = np.where(depth < sub_bottom, 0.6 + 0.08 * _smooth_noise(rng, size, 2 * scale), echo)
    echo = np.where(np.abs(depth - sub_bottom) < 0.012, 0.85, echo)  # superficial fascia
    echo = np.where(depth < 0.025, 0.95, echo)
    echo = np.where(depth > rng.uniform(0.86, 0.92), 0.25, echo)

    mask = lesion_mask(lesion, size)
    # Malignant interiors are heterogeneous; clipped so the amplitude stays positive.
    inner = (np.clip(1.0 + 0.25 * _smooth_noise(rng, size, 2 * scale), 0.3, None)
             if lesion.spikes else 1.0)
    echo = np.where(mask, lesion.echo * 0.5 * inner, echo)

    # Posterior region: every pixel below the lesion's lowest point in its column, softened
    # laterally so the effect has no hard vertical edges (it never reaches into the lesion).
    rows = np.arange(size)[:, None]
    has = mask.any(axis=0)
    bottom = np.where(has, size - 1 - np.argmax(mask[::-1, :], axis=0), size)
    below = (rows > bottom[None, :]).astype(np.float64)
    below = gaussian_filter1d(below, 1.5 * scale, axis=1, mode="nearest") * (~mask)
    echo = echo * (1.0 + (lesion.posterior - 1.0) * below)

    echo = echo * np.exp(-rng.uniform(0.8, 1.2) * depth)

    # Speckle: |complex Gaussian| after a small anisotropic blur (lateral resolution is worse
    # than axial); Rayleigh distributed, normalised to mean 1.
    sig = (0.8 * scale, 1.6 * scale)
    re = gaussian_filter(rng.standard_normal((size, size)), sig)
    im = gaussian_filter(rng.standard_normal((size, size)), sig)
    speckle = np.hypot(re, im)
    speckle /= speckle.mean()

    envelope = np.clip(echo, 0.0, None) * speckle
    image = np.clip(255.0 * (envelope / 1.5) ** 0.85, 0, 255).astype(np.uint8)
    return image, mask


def bbox_xywh(mask: np.ndarray) -> list[int]:
    """BUS-BRA's ``BBOX`` convention (checked on the real release): 1-based x, y of the first
    lesion pixel, width/height = last - first (Matlab ``regionprops``-style)."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0 + 1, y0 + 1, int(xs.max()) - x0, int(ys.max()) - y0]


def write_phantom(root: Path, n_per_class: int = 40, seed: int = 0, size: int = 128) -> Path:
    """Write a BUS-BRA-layout phantom (``Images/``, ``Masks/``, ``bus_data.csv``,
    ``PHANTOM.txt``) with ``n_per_class`` benign and malignant images; return ``root``."""
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, got {n_per_class}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    root = Path(root)
    images_dir, masks_dir = root / "Images", root / "Masks"
    images_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, str | int]] = []
    case = 0
    for label in ("benign", "malignant"):
        written = 0
        while written < n_per_class:
            case += 1
            dual = case % DUAL_VIEW_EVERY == 0 and n_per_class - written >= 2
            views = ("l", "r") if dual else ("s",)
            base = _lesion(np.random.default_rng([seed, case, 0]), label == "malignant")
            for k, side in enumerate(views):
                lesion = base if k == 0 else _mirror(base)
                image, mask = render(lesion, size, np.random.default_rng([seed, case, k + 1]))
                image_id = f"bus_{case:04d}-{side}"
                Image.fromarray(image).save(images_dir / f"{image_id}.png")
                Image.fromarray(mask).convert("1").save(masks_dir / f"{mask_name(image_id)}.png")
                rows.append({
                    "ID": image_id, "Case": case,
                    "Histology": f"phantom {label} lesion",
                    "Pathology": label, "BIRADS": 5 if label == "malignant" else 3,
                    "Device": f"{PHANTOM_DEVICE} v{PHANTOM_VERSION}",
                    "Width": size, "Height": size,
                    "Side": {"l": "left", "r": "right", "s": "single"}[side],
                    "BBOX": str(bbox_xywh(mask)).replace(" ", ""),
                })
                written += 1

    with (root / LABELS_FILE).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(BUSBRA_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    (root / PHANTOM_MARKER).write_text(
        "SYNTHETIC PHANTOM DATA - NOT PATIENT DATA\n\n"
        "Written by sonoaudit's phantom generator (sonoaudit.datasets.phantom, version "
        f"{PHANTOM_VERSION}) with seed={seed}, n_per_class={n_per_class}, size={size}.\n"
        "Ultrasound-like images (speckle, attenuation, hypoechoic lesions: benign smooth oval\n"
        "with posterior enhancement, malignant spiculated taller-than-wide with posterior\n"
        "shadowing) with exact masks, in the BUS-BRA layout. Use it for demos and tests only;\n"
        "results on it say nothing about real patients.\n",
        encoding="utf-8",
    )
    return root
