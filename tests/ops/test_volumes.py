"""Volumes `(B, D, H, W, C)` in `grid_sample` and `affine_grid`: onnxruntime's 5-D ops, closed forms,
finite differences and the edges a user meets, kept small (the 2-D files cover the shared kernels in
depth)."""

import functools
import itertools

import numpy as np
import pytest
import tensorflow as tf

from stn_keras import PADDING_MODES, affine_grid, attention_grid, grid_sample
from stn_keras.testing.ops import EXECUTION_MODES, run_op
from tests import oracle

VOLUME_INTERPOLATIONS = ("bilinear", "nearest")
COMBOS = list(itertools.product(VOLUME_INTERPOLATIONS, PADDING_MODES, (False, True)))
COMBO_IDS = [f"{i}-{p}-{'ac' if a else 'noac'}" for i, p, a in COMBOS]
IDENTITY = np.eye(3, 4)


def random_thetas_3d(rng, batch):
    """Thetas `(batch, 3, 4)`: a random rotation, anisotropic zoom and shift, some reaching outside."""
    rotations = np.linalg.qr(rng.normal(size=(batch, 3, 3)))[0]  # orthonormal
    linear = rotations * rng.uniform(0.6, 1.5, (batch, 1, 3))
    shift = rng.uniform(-0.4, 0.4, (batch, 3, 1))
    return np.concatenate([linear, shift], axis=-1)


def _random_case(
    seed, dtype=np.float64, batch=2, in_size=(3, 4, 5), out_size=(4, 2, 3), channels=2
):
    """A non-cubic volume and a grid of another size from random 3-D affine thetas."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, *in_size, channels)).astype(dtype)
    grid = oracle.affine_grid(random_thetas_3d(rng, batch), out_size, False).astype(dtype)
    return images, grid


def _ramp(shape):
    return np.arange(np.prod(shape), dtype=np.float64).reshape(shape) / 10.0


def _warp(images, theta, **options):
    theta = np.broadcast_to(np.asarray(theta, np.float64), (images.shape[0], 3, 4))
    grid = affine_grid(theta, images.shape[1:4], align_corners=options.get("align_corners", False))
    return grid_sample(images, grid, **options).numpy()


# ---- against onnxruntime's 5-D GridSample and AffineGrid (PyTorch semantics) -----------------------


@pytest.mark.parametrize("mode", ["eager", "xla", "export"])
@pytest.mark.parametrize("interpolation, padding_mode, align_corners", COMBOS, ids=COMBO_IDS)
def test_volume_matches_onnxruntime_grid_sample(interpolation, padding_mode, align_corners, mode):
    images, grid = _random_case(seed=len(mode))
    grid[0, 0, 0, :3] = [[1.0, -1.0, 0.0], [0.25, 0.5, -0.75], [-1.0, 1.0, 1.0]]  # borders, centres
    options = dict(
        interpolation=interpolation, padding_mode=padding_mode, align_corners=align_corners
    )
    got = run_op(grid_sample, images, grid, mode=mode, **options)
    want = oracle.grid_sample(images, grid, **options)
    assert got.shape == want.shape == (2, 4, 2, 3, 2)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_volume_float32_matches_onnxruntime_under_xla_with_many_channels(padding_mode):
    # 6 channels: the forward pass selects taps away instead of reading a zero row.
    images, grid = _random_case(seed=5, dtype=np.float32, in_size=(5, 3, 6), channels=9)
    options = dict(interpolation="bilinear", padding_mode=padding_mode, align_corners=False)
    got = run_op(grid_sample, images, grid, mode="xla", **options)
    want = oracle.grid_sample(images, grid, **options)
    # 8 taps of float32 weights (each a product of 3 factors) times values of magnitude < 5.
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=8 * 4 * 5 * 2**-23 * 4)


@pytest.mark.parametrize("mode", EXECUTION_MODES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_volume_affine_grid_matches_onnxruntime(align_corners, mode):
    theta = random_thetas_3d(np.random.default_rng(1), 2)
    size = np.array([3, 1, 4], np.int32)  # a 1-voxel axis, given as a tensor (dynamic when traced)
    if align_corners:
        size = np.array([3, 2, 4], np.int32)  # onnxruntime puts a lone voxel at -1, PyTorch at 0
    fn = functools.partial(affine_grid, align_corners=align_corners)
    if mode != "eager":  # a dynamic batch and output size; theta's (3, 4) is what makes it 3-D
        signature = [tf.TensorSpec([None, 3, 4], tf.float64), tf.TensorSpec([3], tf.int32)]
        fn = tf.function(fn, input_signature=signature, jit_compile=mode == "xla")
    got = fn(tf.constant(theta), tf.constant(size))
    want = oracle.affine_grid(theta, size, align_corners)
    assert got.shape == want.shape == (2, *size, 3)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-15 * 8)


def test_volume_affine_grid_puts_a_lone_voxel_at_zero_like_pytorch():
    grid = affine_grid(IDENTITY[None], (1, 1, 3), align_corners=True).numpy()
    np.testing.assert_array_equal(grid[0, 0, 0, :, 1:], 0.0)
    np.testing.assert_array_equal(grid[0, 0, 0, :, 0], [-1.0, 0.0, 1.0])


# ---- closed forms -------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation, padding_mode, align_corners", COMBOS, ids=COMBO_IDS)
def test_volume_identity_theta_returns_input(interpolation, padding_mode, align_corners):
    images = _ramp((2, 3, 4, 5, 2))
    out = _warp(
        images,
        IDENTITY,
        interpolation=interpolation,
        padding_mode=padding_mode,
        align_corners=align_corners,
    )
    np.testing.assert_allclose(out, images, rtol=0, atol=1e-12)


def _shifted(images, axis, shift, padding_mode):
    """`images` moved by `shift` voxels along array `axis` (output i reads input i + shift)."""
    size = images.shape[axis]
    source = np.arange(size) + shift
    if padding_mode == "border":
        source = np.clip(source, 0, size - 1)
    elif padding_mode == "reflection":  # mirrored about the outer voxel faces: -1 -> 0, n -> n - 1
        source = np.where(
            source < 0, -1 - source, np.where(source >= size, 2 * size - 1 - source, source)
        )
    out = np.take(images, np.clip(source, 0, size - 1), axis=axis)
    if padding_mode == "zeros":
        inside = (source >= 0) & (source < size)
        shape = [1] * images.ndim
        shape[axis] = size
        out = np.where(inside.reshape(shape), out, 0.0)
    return out


@pytest.mark.parametrize("interpolation", VOLUME_INTERPOLATIONS)
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize(
    "component, shift", [(0, 2), (1, -1), (2, 1), (2, -3)], ids=["x+2", "y-1", "z+1", "z-3"]
)
def test_volume_integer_voxel_shift_follows_the_padding(
    interpolation, padding_mode, component, shift
):
    images = _ramp((1, 4, 3, 5, 2))
    axis = 3 - component  # x runs along W (array axis 3), z along D (array axis 1)
    theta = IDENTITY.copy()
    theta[component, 3] = (
        2.0 * shift / images.shape[axis]
    )  # one voxel is 2 / n (align_corners=False)
    out = _warp(images, theta, interpolation=interpolation, padding_mode=padding_mode)
    np.testing.assert_allclose(out, _shifted(images, axis, shift, padding_mode), rtol=0, atol=1e-12)


@pytest.mark.parametrize("interpolation", VOLUME_INTERPOLATIONS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_volume_permutation_theta_permutes_axes(interpolation, align_corners):
    images = _ramp((1, 4, 4, 4, 3))
    options = dict(interpolation=interpolation, align_corners=align_corners)
    # Output (x, y, z) reads input (z, y, x): out[k, i, j] = in[j, i, k].
    swap_xz = [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]]
    np.testing.assert_allclose(
        _warp(images, swap_xz, **options), images.transpose(0, 3, 2, 1, 4), atol=1e-12
    )
    # Output (x, y, z) reads input (y, z, x): out[k, i, j] = in[j, k, i].
    cycle = [[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    np.testing.assert_allclose(
        _warp(images, cycle, **options), images.transpose(0, 2, 3, 1, 4), atol=1e-12
    )


@pytest.mark.parametrize("component", [0, 1, 2])
@pytest.mark.parametrize("align_corners", [False, True])
def test_volume_negated_axis_flips_the_volume(component, align_corners):
    images = _ramp((1, 3, 4, 5, 2))
    theta = IDENTITY.copy()
    theta[component, component] = -1.0
    out = _warp(images, theta, align_corners=align_corners)
    np.testing.assert_allclose(out, np.flip(images, axis=3 - component), atol=1e-12)


def test_volume_attention_grid_is_the_affine_grid_of_its_matrix():
    params = np.array([[0.5, 0.1, -0.2, 0.3]])
    theta = np.concatenate([0.5 * np.eye(3), params[0, 1:, None]], axis=-1)[None]
    got = attention_grid(params, (2, 3, 4)).numpy()
    np.testing.assert_allclose(got, oracle.affine_grid(theta, (2, 3, 4), False), atol=1e-15)


# ---- gradients ----------------------------------------------------------------------------------------


def _gradient_case(seed, channels):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(1, 2, 3, 3, channels))
    # Away from integer voxel positions, where the interpolant has kinks.
    grid = rng.uniform(-1.3, 1.3, size=(1, 2, 2, 2, 3))
    return images, grid


# 1 channel: per-tap backward; 5: the stacked layout, scattered in rows one channel wider. Every
# padding eagerly; under XLA (the same graph, compiled) one padding with slopes of both signs.
GRADIENT_CASES = [(p, False, c) for p in PADDING_MODES for c in (1, 5)] + [
    ("reflection", True, 1),
    ("reflection", True, 5),
]


@pytest.mark.parametrize("padding_mode, jit, channels", GRADIENT_CASES)
def test_volume_gradient_matches_finite_differences(padding_mode, jit, channels):
    images, grid = _gradient_case(seed=2, channels=channels)
    fn = functools.partial(grid_sample, padding_mode=padding_mode, align_corners=jit)
    (d_images, fd_images), (d_grid, fd_grid) = oracle.batched_jacobians(fn, images, grid, jit=jit)
    np.testing.assert_allclose(d_images, fd_images, atol=1e-6, err_msg="d/dimages")
    np.testing.assert_allclose(d_grid, fd_grid, atol=1e-5, err_msg="d/dgrid")


def test_volume_nearest_has_zero_grid_gradient():
    images, grid = (tf.constant(x) for x in _gradient_case(seed=3, channels=2))
    with tf.GradientTape() as tape:
        tape.watch(grid)
        out = grid_sample(images, grid, interpolation="nearest")
    np.testing.assert_array_equal(tape.gradient(out, grid).numpy(), 0.0)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
def test_volume_theta_gradient_through_affine_grid_matches_finite_differences(jit):
    rng = np.random.default_rng(4)
    images = tf.constant(rng.normal(size=(2, 3, 4, 5, 2)))
    theta = tf.constant(random_thetas_3d(rng, 2))
    weights = tf.constant(rng.normal(size=(2, 3, 3, 4, 2)))

    def loss(theta):
        out = grid_sample(images, affine_grid(theta, (3, 3, 4)), padding_mode="border")
        return tf.reduce_sum(out * weights)

    def value_and_gradient(theta):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            value = loss(theta)
        return value, tape.gradient(value, theta)

    compiled = tf.function(value_and_gradient, jit_compile=True) if jit else value_and_gradient
    _, analytic = compiled(theta)
    delta = 1e-6
    steps = np.eye(24).reshape(24, 2, 3, 4) * delta
    batched = tf.function(lambda t: tf.map_fn(loss, t), jit_compile=jit)  # noqa: E731
    ups = batched(tf.constant(theta.numpy()[None] + steps)).numpy()
    downs = batched(tf.constant(theta.numpy()[None] - steps)).numpy()
    numerical = ((ups - downs) / (2 * delta)).reshape(2, 3, 4)
    np.testing.assert_allclose(analytic.numpy(), numerical, atol=1e-5)


# ---- edges a user meets -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["eager", "xla"])
def test_volume_non_finite_points_read_zero_and_spare_other_samples(mode):
    images, grid = _random_case(seed=6, out_size=(2, 2, 2))
    images[1, 0, 0, 0] = np.nan  # a NaN voxel in sample 1 only
    grid[0, 0, 0, 0] = [np.nan, 0.0, 0.0]
    grid[0, 1, 1, 1] = [0.0, np.inf, 0.0]
    grid[0, 1, 0, 0] = [0.0, 0.0, -np.inf]
    for padding_mode in PADDING_MODES:
        out = run_op(grid_sample, images, grid, mode=mode, padding_mode=padding_mode).numpy()
        np.testing.assert_array_equal(out[0, 0, 0, 0], 0.0)
        np.testing.assert_array_equal(out[0, 1, 1, 1], 0.0)
        np.testing.assert_array_equal(out[0, 1, 0, 0], 0.0)
        assert np.isfinite(out[0]).all()  # sample 1's NaN voxel never reaches sample 0
        clean = images.copy()
        clean[1] = 0.0
        good = oracle.grid_sample(
            clean,
            np.nan_to_num(grid, nan=5.0, posinf=5.0, neginf=5.0),
            "bilinear",
            padding_mode,
            False,
        )
        mask = np.isfinite(grid[0]).all(-1)
        np.testing.assert_allclose(out[0][mask], good[0][mask], atol=1e-12)


def test_volume_empty_batch_works_under_xla():
    out = run_op(grid_sample, np.zeros((0, 3, 4, 5, 2)), np.zeros((0, 2, 3, 1, 3)), mode="xla")
    assert out.shape == (0, 2, 3, 1, 2)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32])
def test_volume_reduced_precision_keeps_its_dtype(dtype):
    images, grid = _random_case(seed=8)
    out = grid_sample(tf.cast(images, dtype), tf.cast(grid, dtype))
    assert out.dtype == dtype
    # Rounding the inputs to the dtype moves each output by a few of its ulps (values < 5).
    want = oracle.grid_sample(
        tf.cast(tf.cast(images, dtype), tf.float64),
        tf.cast(tf.cast(grid, dtype), tf.float64),
        "bilinear",
        "zeros",
        False,
    )
    eps = {tf.float16: 2**-10, tf.bfloat16: 2**-7, tf.float32: 2**-23}[dtype]
    np.testing.assert_allclose(tf.cast(out, tf.float64).numpy(), want, rtol=0, atol=5 * 8 * eps)


def test_bicubic_volume_is_refused_naming_the_shape():
    with pytest.raises(ValueError, match=r"Bicubic.*volumes.*images.shape=\(1, 2, 3, 4, 1\)"):
        grid_sample(tf.zeros((1, 2, 3, 4, 1)), tf.zeros((1, 2, 2, 2, 3)), interpolation="bicubic")


@pytest.mark.parametrize(
    "images_shape, grid_shape, message",
    [
        ((1, 2, 3, 4, 1), (1, 2, 2, 2), r"rank-5.*grid.shape=\(1, 2, 2, 2\)"),
        (
            (1, 2, 3, 4, 1),
            (1, 2, 2, 2, 2),
            r"last axis of size 3 holding \(x, y, z\).*\(1, 2, 2, 2, 2\)",
        ),
        ((1, 3, 4, 1), (1, 2, 2, 2, 3), r"rank-4.*grid.shape=\(1, 2, 2, 2, 3\)"),
        ((1, 2, 3, 4, 5, 1), (1, 2, 2, 2, 3), r"rank-4.*or a rank-5.*\(1, 2, 3, 4, 5, 1\)"),
        (
            (2, 2, 3, 4, 1),
            (3, 2, 2, 2, 3),
            r"same batch size.*\(2, 2, 3, 4, 1\).*\(3, 2, 2, 2, 3\)",
        ),
    ],
)
def test_volume_shape_errors_name_the_shapes(images_shape, grid_shape, message):
    with pytest.raises(ValueError, match=message):
        grid_sample(tf.zeros(images_shape), tf.zeros(grid_shape))


def test_volume_batch_mismatch_known_only_at_run_time_fails_under_xla():
    fn = tf.function(
        grid_sample,
        input_signature=[tf.TensorSpec([None, 2, 2, 2, 1]), tf.TensorSpec([None, 1, 1, 1, 3])],
        jit_compile=True,
    )
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="must_match|2.*3|3.*2"):
        fn(tf.zeros((2, 2, 2, 2, 1)), tf.zeros((3, 1, 1, 1, 3)))


@pytest.mark.parametrize(
    "theta_shape, size, message",
    [
        # theta of one rank and size of the other: both named
        (
            (1, 3, 4),
            (4, 4),
            r"`theta` and `size` describe different ranks.*takes a size \(D_out, H_out, W_out\)"
            r".*theta.shape=\(1, 3, 4\), size=\(4, 4\)",
        ),
        (
            (1, 2, 3),
            (2, 4, 4),
            r"`theta` and `size` describe different ranks.*takes a size \(H_out, W_out\)"
            r".*theta.shape=\(1, 2, 3\), size=\(2, 4, 4\)",
        ),
        ((1, 3, 3), (2, 4, 4), r"\(B, 2, 3\) or \(B, 3, 4\).*theta.shape=\(1, 3, 3\)"),
    ],
)
def test_affine_grid_errors_name_theta_or_size(theta_shape, size, message):
    with pytest.raises(ValueError, match=message):
        affine_grid(tf.zeros(theta_shape), size)
