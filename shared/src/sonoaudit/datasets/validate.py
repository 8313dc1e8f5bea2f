"""Checks shared by every layout: each image decodes, each mask decodes, matches its image's size
and is binary, no image appears twice, every expected class has images.

Layout-specific checks (missing/extra masks, labels files) live in the readers; this module sees
only :class:`ImageRecord` lists and returns the records completed with sha256 and size.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping

from tqdm import tqdm

from sonoaudit.datasets.imageio import (
    MASK_NONBINARY_TOLERANCE,
    ImageReadError,
    binarize,
    mask_levels,
    open_bytes,
    to_grey,
)
from sonoaudit.datasets.records import CLASSES, ImageRecord, Problem

LESION_CLASSES = ("benign", "malignant")
MAX_NAME = 255
MAX_CASE_ID = 64


def check_records(
    records: list[ImageRecord],
    expected_classes: Mapping[str, str],
    *,
    progress: bool = False,
) -> tuple[list[ImageRecord], list[Problem]]:
    """Read every file once; return (records with sha256/width/height filled, problems).

    ``expected_classes`` maps each class the layout must have to the path to blame when it has
    no images (its folder, or the labels file). Records whose image cannot be read are left out
    of the returned list (they are reported).
    """
    problems: list[Problem] = []
    checked: list[ImageRecord] = []
    first_seen: dict[str, ImageRecord] = {}

    for rec in tqdm(records, desc="checking images", unit="img", disable=not progress):
        # Column widths of the images table (Image.name, Image.case_id).
        if len(rec.name) > MAX_NAME or len(rec.case_id) > MAX_CASE_ID:
            problems.append(Problem(str(rec.image_path), (
                f"name ({len(rec.name)} chars) or case id ({len(rec.case_id)} chars) too long; "
                f"at most {MAX_NAME} and {MAX_CASE_ID} characters")))
        if rec.class_label not in CLASSES:
            problems.append(Problem(str(rec.image_path), (
                f"unknown class label {rec.class_label!r}; expected one of {', '.join(CLASSES)}")))
        try:
            data = rec.image_path.read_bytes()
        except OSError as exc:
            problems.append(Problem(str(rec.image_path), f"cannot read image file ({exc})"))
            continue
        digest = hashlib.sha256(data).hexdigest()
        try:
            im = open_bytes(data)
            grey, conversion = to_grey(im)
        except ImageReadError as exc:
            problems.append(Problem(str(rec.image_path), str(exc)))
            continue
        width, height = im.width, im.height

        lesion_pixels = 0
        mask_ok = True  # every mask read and matched the image size
        for mpath in rec.mask_paths:
            try:
                levels = mask_levels(open_bytes(mpath.read_bytes()))
            except OSError as exc:
                problems.append(Problem(str(mpath), f"cannot read mask file ({exc})"))
                mask_ok = False
                continue
            except ImageReadError as exc:
                problems.append(Problem(str(mpath), f"mask: {exc}"))
                mask_ok = False
                continue
            mh, mw = levels.shape
            if (mw, mh) != (width, height):
                problems.append(Problem(str(mpath), (
                    f"mask is {mw}x{mh} but its image {rec.image_path.name} is {width}x{height}")))
                mask_ok = False
                continue
            mask, intermediate = binarize(levels)
            if intermediate > MASK_NONBINARY_TOLERANCE:
                problems.append(Problem(str(mpath), (
                    f"mask is not binary: {intermediate:.1%} of pixels are neither black nor "
                    f"white (tolerance {MASK_NONBINARY_TOLERANCE:.0%}); re-export it as a "
                    "black/white PNG")))
            lesion_pixels += int(mask.sum())
        if rec.class_label == "normal" and lesion_pixels:
            problems.append(Problem(str(rec.mask_paths[0]), (
                f"image labelled normal has a non-empty mask ({lesion_pixels} lesion pixels)")))
        elif rec.class_label in LESION_CLASSES and rec.mask_paths and mask_ok and not lesion_pixels:
            # A lesion class with an all-black mask would teach the joint model "no lesion".
            problems.append(Problem(str(rec.mask_paths[0]), (
                f"image labelled {rec.class_label} has an empty mask (no lesion pixels)")))

        # Duplicates by grey pixels, not file bytes: a re-encoded or RGB-saved copy of the same
        # frame is the same image (identical bytes are a special case).
        pixels = hashlib.sha256(f"{grey.shape}".encode() + grey.tobytes()).hexdigest()
        prior = first_seen.get(pixels)
        if prior is not None:
            same = "identical file" if prior.sha256 == digest else "identical pixels"
            if prior.class_label != rec.class_label:
                what = (f"duplicate image across classes: {same} to {prior.image_path} "
                        f"({prior.class_label}) but labelled {rec.class_label}")
            else:
                what = (f"duplicate image: {same} to {prior.image_path} (same class "
                        f"{rec.class_label}); remove one copy, or it leaks across splits")
            problems.append(Problem(str(rec.image_path), what))

        meta = {**rec.meta, "grey_conversion": conversion, "original_mode": im.mode,
                "pixel_sha256": pixels}
        done = dataclasses.replace(rec, sha256=digest, width=width, height=height, meta=meta)
        if prior is None:
            first_seen[pixels] = done
        checked.append(done)

    counts: dict[str, int] = {}
    for rec in records:
        counts[rec.class_label] = counts.get(rec.class_label, 0) + 1
    for cls, where in expected_classes.items():
        if counts.get(cls, 0) == 0:
            problems.append(Problem(where, f"class {cls!r} has no images"))
    return checked, problems
