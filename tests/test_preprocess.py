"""Image pre-processing: crop-box statistics, output shapes/ranges, determinism, eval geometry."""

import math

import numpy as np
import pytest

from itm_jax.data.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    normalize,
    random_resized_crop_box,
)

LOW = (0.0 - IMAGENET_MEAN) / IMAGENET_STD  # normalised value of a 0 pixel, per channel
HIGH = (1.0 - IMAGENET_MEAN) / IMAGENET_STD


def _unnormalize(x):
    return (x * IMAGENET_STD + IMAGENET_MEAN) * 255.0


def _random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_normalize_maps_extremes_to_imagenet_bounds():
    x = normalize(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], LOW, rtol=1e-6)
    np.testing.assert_allclose(x[0, 1], HIGH, rtol=1e-6)


@pytest.mark.parametrize("height,width", [(300, 400), (480, 200), (64, 64)])
def test_crop_box_within_image_and_within_scale_and_ratio(height, width):
    rng = np.random.default_rng(0)
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    for _ in range(300):
        top, left, h, w = random_resized_crop_box(height, width, rng, scale=scale, ratio=ratio)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        assert h > 0 and w > 0
        # Rounding h and w to integers moves area and aspect by at most ~1 pixel per side.
        area = h * w / (height * width)
        tol = (h + w + 1) / (height * width)
        assert scale[0] - tol <= area <= scale[1] + tol
        slack = 1.5 / min(h, w)
        assert ratio[0] * (1 - slack) <= w / h <= ratio[1] * (1 + slack)


def test_crop_box_falls_back_to_centre_crop_with_clamped_ratio():
    # A 10 x 1000 strip: no box with aspect <= 4/3 and area >= 8 % fits, so every try fails.
    top, left, h, w = random_resized_crop_box(10, 1000, np.random.default_rng(0))
    assert (h, w) == (10, round(10 * 4 / 3))
    assert (top, left) == (0, (1000 - w) // 2)


def test_crop_box_samples_cover_the_scale_range():
    rng = np.random.default_rng(1)
    areas = [math.prod(random_resized_crop_box(500, 500, rng)[2:]) / 500**2 for _ in range(500)]
    assert min(areas) < 0.15 and max(areas) > 0.9


def test_train_transform_shape_range_and_determinism():
    image = _random_image(120, 90)
    t = TrainTransform(size=32)
    a = t(image, np.random.default_rng(7))
    b = t(image, np.random.default_rng(7))
    c = t(image, np.random.default_rng(8))
    assert a.shape == (32, 32, 3) and a.dtype == np.float32
    assert np.all(a >= LOW - 1e-5) and np.all(a <= HIGH + 1e-5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_train_transform_flips_about_half_the_time():
    # Full-image crop (scale 1, ratio = the image's own), so the output is the resized image
    # or its mirror; the image is left-right asymmetric.
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :10] = 255
    t = TrainTransform(size=20, scale=(1.0, 1.0), ratio=(2.0, 2.0))
    rng = np.random.default_rng(0)
    outs = [t(image, rng) for _ in range(200)]
    flipped = [o[:, -1, 0].mean() > o[:, 0, 0].mean() for o in outs]
    for o, f in zip(outs, flipped):
        np.testing.assert_allclose(o, outs[flipped.index(f)], atol=1e-6)
    assert 70 < sum(flipped) < 130
    never = TrainTransform(size=20, scale=(1.0, 1.0), ratio=(2.0, 2.0), flip=0.0)
    assert all(never(image, rng)[:, 0, 0].mean() > 0 for _ in range(20))


def test_eval_transform_centre_crop_geometry():
    # 512 x 768 halves exactly to 256 x 384; the 224 crop starts at row 16, col 80, i.e. rows
    # [32, 480) x cols [160, 608) of the original. Paint that region green, the rest red.
    image = np.zeros((512, 768, 3), np.uint8)
    image[..., 0] = 255
    image[32:480, 160:608] = (0, 255, 0)
    out = _unnormalize(EvalTransform(size=224, resize=256)(image))
    assert out.shape == (224, 224, 3)
    # Bilinear down-sampling by 2 reads +-2 source pixels: only the outermost output ring
    # touches the red border; one pixel further in is pure green.
    inner = out[1:-1, 1:-1]
    np.testing.assert_allclose(inner[..., 0], 0, atol=0.5)
    np.testing.assert_allclose(inner[..., 1], 255, atol=0.5)
    for edge in (out[0], out[-1], out[:, 0], out[:, -1]):
        assert np.all(edge[1:-1, 0] > 10)  # red leaks into every border pixel


def test_eval_transform_resizes_shorter_side_for_portrait_images():
    out = EvalTransform(size=16, resize=20)(_random_image(50, 30))
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, EvalTransform(size=16, resize=20)(_random_image(50, 30)))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="uint8 RGB"):
        TrainTransform()(np.zeros((10, 10), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8 RGB"):
        EvalTransform()(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="resize >= size"):
        EvalTransform(size=300, resize=256)
