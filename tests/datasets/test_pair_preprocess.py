"""preprocess: square output, aspect kept, centred, padded with 0; masks nearest-neighbour and
binary. Expected geometry computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sonoaudit.datasets import preprocess


def test_wide_image_is_padded_top_and_bottom() -> None:
    image = np.full((50, 100), 200, dtype=np.uint8)
    mask = np.zeros((50, 100), dtype=bool)
    mask[:, 50:] = True  # right half
    img, msk = preprocess(image, mask, 64)
    assert img.shape == (64, 64) and img.dtype == np.uint8
    assert msk.shape == (64, 64) and msk.dtype == bool
    # 100x50 → 64x32, centred: rows 16..47 hold the image, the rest is padding 0.
    assert (img[:16] == 0).all() and (img[48:] == 0).all()
    assert (img[16:48] == 200).all()  # bicubic of a constant is the constant
    assert not msk[:16].any() and not msk[48:].any()
    assert msk[16:48, 32:].all() and not msk[16:48, :32].any()


def test_tall_image_is_padded_left_and_right() -> None:
    image = np.full((90, 30), 7, dtype=np.uint8)
    mask = np.ones((90, 30), dtype=bool)
    img, msk = preprocess(image, mask, 60)
    # 30x90 → 20x60; left pad (60 - 20) // 2 = 20.
    assert (img[:, :20] == 0).all() and (img[:, 40:] == 0).all() and (img[:, 20:40] == 7).all()
    assert msk.sum() == 20 * 60 and msk[:, 20:40].all()


def test_mask_stays_binary_when_upscaling_and_downscaling() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    mask = rng.random((37, 53)) > 0.5
    for size in (16, 128):
        img, msk = preprocess(image, mask, size)
        assert msk.dtype == bool and img.dtype == np.uint8
        assert img.shape == msk.shape == (size, size)


def test_nearest_neighbour_upscale_of_a_single_pixel() -> None:
    image = np.zeros((4, 4), dtype=np.uint8)
    mask = np.zeros((4, 4), dtype=bool)
    mask[1, 2] = True
    _, msk = preprocess(image, mask, 16)
    expected = np.zeros((16, 16), dtype=bool)
    expected[4:8, 8:12] = True  # each source pixel becomes a 4x4 block
    assert np.array_equal(msk, expected)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="differs from image shape"):
        preprocess(np.zeros((4, 4), np.uint8), np.zeros((4, 5), bool), 8)
    with pytest.raises(ValueError, match="2-D uint8"):
        preprocess(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), bool), 8)
    with pytest.raises(ValueError, match="positive"):
        preprocess(np.zeros((4, 4), np.uint8), np.zeros((4, 4), bool), 0)


def test_uint8_0_255_mask_is_accepted() -> None:
    image = np.zeros((10, 10), dtype=np.uint8)
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2:5, 2:5] = 255
    _, msk = preprocess(image, mask, 20)
    assert msk.sum() == 36 and msk[4:10, 4:10].all()
