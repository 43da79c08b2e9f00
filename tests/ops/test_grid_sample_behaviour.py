"""grid_sample's behaviour: dtypes, dynamic shapes, index arithmetic, bad input and robustness."""

import numpy as np
import pytest
import tensorflow as tf

from stn_keras import INTERPOLATIONS, PADDING_MODES, affine_grid, grid_sample
from stn_keras.ops.sampling import flat_indices
from stn_keras.testing.ops import run_op
from tests import oracle

# ---- dtypes and precision ----------------------------------------------------------------------------

DTYPE_TOLERANCE = {"float16": 5e-3, "bfloat16": 4e-2, "float32": 1e-5, "float64": 1e-12}


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCE))
def test_output_has_images_dtype_and_matches_reference(dtype, interpolation):
    rng = np.random.default_rng(0)
    images = tf.cast(rng.uniform(size=(2, 6, 5, 3)), dtype)
    grid = oracle.affine_grid(oracle.random_thetas(rng, 2), (4, 7), False).astype(np.float32)
    out = grid_sample(images, grid, interpolation=interpolation)
    assert out.dtype == images.dtype
    want = oracle.grid_sample(
        tf.cast(images, tf.float64).numpy(), grid, interpolation, "zeros", False
    )
    np.testing.assert_allclose(
        tf.cast(out, tf.float64).numpy(),
        want,
        atol=DTYPE_TOLERANCE[dtype] * (3 if interpolation == "bicubic" else 1),
    )


def test_half_precision_images_keep_sub_pixel_coordinates():
    # Columns alternate 0 / 1 on a 4096-wide image. Half-way between columns 3000 and 3001 bilinear
    # interpolation gives 0.5; float16 coordinates cannot even represent 3000.5 (spacing 2 there).
    width = 4096
    images = tf.constant((np.arange(width) % 2).reshape(1, 1, width, 1), tf.float16)
    x = (2 * 3000.5 + 1) / width - 1  # align_corners=False position of pixel coordinate 3000.5
    grid = tf.constant([[[[x, 0.0]]]], tf.float32)
    assert float(grid_sample(images, grid)[0, 0, 0, 0]) == 0.5


# ---- shapes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["graph", "xla"])
def test_dynamic_batch_and_spatial_sizes_under_one_trace(mode):
    fn = tf.function(
        lambda x, g: grid_sample(x, g, interpolation="bicubic"),
        input_signature=[
            tf.TensorSpec([None, None, None, None]),
            tf.TensorSpec([None, None, None, 2]),
        ],
        jit_compile=mode == "xla",
    )
    rng = np.random.default_rng(1)
    for batch, in_size, out_size, channels in [(1, (4, 5), (3, 3), 1), (3, (7, 2), (5, 8), 4)]:
        images = rng.normal(size=(batch, *in_size, channels)).astype(np.float32)
        grid = rng.uniform(-1.1, 1.1, size=(batch, *out_size, 2)).astype(np.float32)
        want = oracle.grid_sample(images, grid, "bicubic", "zeros", False)
        np.testing.assert_allclose(fn(images, grid).numpy(), want, atol=2e-5)
    assert fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("mode", ["eager", "xla"])
def test_empty_batch_returns_empty_result(mode):
    out = run_op(
        grid_sample,
        tf.zeros((0, 4, 5, 3)),
        tf.zeros((0, 2, 6, 2)),
        mode=mode,
        interpolation="bicubic",
        padding_mode="reflection",
    )
    assert out.shape == (0, 2, 6, 3)


def test_flat_indices_do_not_overflow_past_two_to_the_31():
    # Virtual sizes only: B * H * W = 4 * 50_000 * 50_000 = 1e10 pixel rows, never allocated.
    batch, height, width = 4, 50_000, 50_000
    last = flat_indices(
        tf.constant(batch - 1), [tf.constant(height - 1), tf.constant(width - 1)], (height, width)
    )
    assert last.dtype == tf.int64
    assert int(last) == batch * height * width - 1 > 2**31
    dynamic = flat_indices(
        tf.constant([3]),
        [tf.constant([49_999]), tf.constant([12_345])],
        (tf.constant(height), tf.constant(width)),
    )
    assert int(dynamic[0]) == (3 * height + 49_999) * width + 12_345
    # A volume's voxel (b, z, y, x) of 4 x 2_000 x 2_000 x 2_000 voxels: 3.2e10 rows.
    depth = 2_000
    voxel = flat_indices(
        tf.constant(3), [tf.constant(1_999), tf.constant(1_234), tf.constant(567)], (depth,) * 3
    )
    assert int(voxel) == ((3 * depth + 1_999) * depth + 1_234) * depth + 567 > 2**34


# ---- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "images_shape, grid_shape, message",
    [
        ((4, 5, 3), (1, 2, 2, 2), r"images.shape=\(4, 5, 3\)"),
        ((1, 4, 5, 3, 1, 1), (1, 2, 2, 2), r"images.shape=\(1, 4, 5, 3, 1, 1\)"),
        ((1, 4, 5, 3), (2, 2, 2), r"grid.shape=\(2, 2, 2\)"),
        ((1, 4, 5, 3), (1, 2, 2, 3), r"grid.shape=\(1, 2, 2, 3\)"),
        ((2, 4, 5, 3), (3, 2, 2, 2), r"images.shape=\(2, 4, 5, 3\), grid.shape=\(3, 2, 2, 2\)"),
    ],
)
def test_wrong_shapes_raise_naming_the_shape(images_shape, grid_shape, message):
    with pytest.raises(ValueError, match=message):
        grid_sample(tf.zeros(images_shape), tf.zeros(grid_shape))


@pytest.mark.parametrize(
    "option, value",
    [
        ("interpolation", "linear"),
        ("interpolation", "cubic"),
        ("padding_mode", "constant"),
        ("padding_mode", None),
        ("align_corners", 1),
        ("align_corners", "False"),
    ],
)
def test_unknown_option_raises_naming_the_value(option, value):
    with pytest.raises(ValueError, match=f"{option}={value!r}"):
        grid_sample(tf.zeros((1, 4, 4, 1)), tf.zeros((1, 2, 2, 2)), **{option: value})


@pytest.mark.parametrize("grids", [3, 1])
@pytest.mark.parametrize("mode", ["graph", "xla"])
def test_batch_sizes_differing_only_at_run_time_raise_naming_both(mode, grids):
    fn = tf.function(
        grid_sample,
        input_signature=[tf.TensorSpec([None, 4, 5, 1]), tf.TensorSpec([None, 3, 3, 2])],
        jit_compile=mode == "xla",
    )
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        fn(tf.zeros((2, 4, 5, 1)), tf.zeros((grids, 3, 3, 2)))
    message = str(error.value)
    assert f"[2] != values[1].shape = [{grids}]" in message
    assert "batch_sizes_of_images_and_grid_must_match" in message


def test_integer_images_raise():
    with pytest.raises(ValueError, match="images.dtype=int32"):
        grid_sample(tf.zeros((1, 4, 4, 1), tf.int32), tf.zeros((1, 2, 2, 2)))


# ---- robustness: non-finite and huge coordinates ----------------------------------------------------


def _rounding_bound(images, interpolation):
    """How far two float32 evaluations of one sample may differ by rounding alone.

    XLA's code differs by CPU and by batch size (vector width, fused multiply-adds), so the same sample
    may round differently alone and in a batch: each of the T*T taps' products and sums can differ by an
    ulp of the largest value (weights sum to <= 1.7 in magnitude), and each pixel coordinate (up to
    max(H, W)) by a few ulps, which moves the output by the interpolant's slope (<= 2.5 per pixel per
    unit of value for Keys' cubic) times the value range.
    """
    eps = np.finfo(np.float32).eps
    taps = {"nearest": 1, "bilinear": 4, "bicubic": 16}[interpolation]
    magnitude = float(np.max(np.abs(images)))
    values = 2 * taps * 1.7 * eps * magnitude
    coordinates = 4 * eps * max(images.shape[1:3]) * 2.5 * 2 * magnitude
    return values + coordinates


BAD_THETAS = {
    "nan": [[np.nan, 0, 0], [0, 1, 0]],
    "inf": [[1, 0, np.inf], [0, 1, 0]],
    "-inf": [[1, 0, 0], [0, -np.inf, 0]],
    "huge": [[1e30, 0, 1e30], [0, 1, 0]],
    "-huge": [[1, 0, -3e38], [0, 1, -3e38]],
}


@pytest.mark.parametrize("mode", ["eager", "xla", "export"])
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_bad_theta_never_raises_nor_touches_other_samples(interpolation, padding_mode, mode):
    rng = np.random.default_rng(2)
    good = oracle.random_thetas(rng, 1)[0]
    thetas = np.stack([good, *BAD_THETAS.values(), good]).astype(np.float32)  # 7x2x3
    images = rng.uniform(-1.0, 2.0, size=(len(thetas), 5, 6, 2)).astype(np.float32)
    options = dict(interpolation=interpolation, padding_mode=padding_mode)
    grid = affine_grid(thetas, (4, 5))
    out = run_op(grid_sample, images, grid, mode=mode, **options).numpy()
    assert out.shape == (7, 4, 5, 2)
    assert np.all(np.isfinite(out))
    for b in (0, 6):  # the good samples are what they are alone, to rounding
        alone = run_op(grid_sample, images[b : b + 1], grid[b : b + 1], mode=mode, **options)
        np.testing.assert_allclose(
            out[b : b + 1], alone, rtol=0, atol=_rounding_bound(images, interpolation)
        )
    np.testing.assert_array_equal(out[1], 0.0, err_msg="a NaN coordinate reads as outside")
    if padding_mode == "zeros":
        np.testing.assert_array_equal(out[1:6], 0.0, err_msg="far-out points read zeros")
    if interpolation != "bicubic":  # convex combinations stay within the input's range
        assert out.min() >= min(images.min(), 0.0) and out.max() <= images.max()


def test_non_finite_grid_points_only_zero_themselves():
    images = np.ones((1, 3, 3, 1), np.float32)
    grid = np.zeros((1, 1, 3, 2), np.float32)
    grid[0, 0, 1, 0] = np.nan
    out = grid_sample(images, grid, padding_mode="border").numpy().ravel()
    np.testing.assert_array_equal(out, [1.0, 0.0, 1.0])


# The forward pass masks taps one way up to `_ZERO_ROW_CHANNELS` channels and another beyond.
@pytest.mark.parametrize("channels", [1, 3, 12])
@pytest.mark.parametrize("mode", ["eager", "xla", "export"])
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_non_finite_pixels_spread_exactly_as_in_the_oracle(
    interpolation, padding_mode, mode, channels
):
    rng = np.random.default_rng(7)
    images = rng.uniform(size=(2, 6, 7, channels))
    images[0, 0, 0, :] = np.nan  # a corner, read by taps outside the image under a zoom-out
    images[0, 3, 4, -1] = np.inf
    images[1, 5, 6, 0] = -np.inf
    grid = affine_grid(np.array([[[1.4, 0.1, 0.05], [-0.1, 1.3, 0.0]]] * 2), (5, 6)).numpy()
    options = dict(interpolation=interpolation, padding_mode=padding_mode)
    out = run_op(grid_sample, images, grid, mode=mode, **options).numpy()
    want = oracle.grid_sample(images, grid, interpolation, padding_mode, False)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(out[finite], want[finite], rtol=0, atol=1e-12)
