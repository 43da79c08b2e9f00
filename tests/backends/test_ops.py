"""`affine_grid` and `grid_sample` on the Keras backend of this process: the same oracles as the
TensorFlow tests (onnxruntime's float64 `GridSample` / `AffineGrid`, PyTorch's own numbers as
fixtures), run through the backend's tensors, autodiff and compiler. The README's test command
runs this directory under `KERAS_BACKEND=tensorflow`, `jax` and `torch`."""

import json
import pathlib

import keras
import numpy as np
import pytest

import stn_keras
from tests import oracle
from tests.backends.harness import BACKEND, compiled, float64, run, value_and_grads
from tests.fixtures.make_torch_fixtures import border_inputs, identity_stn_inputs, nan_inputs_numpy

FIXTURES = json.loads(
    (pathlib.Path(__file__).parents[1] / "fixtures" / "torch_grid_sample.json").read_text()
)
EPS64 = np.finfo(np.float64).eps
EPS32 = 2.0**-24
MODES = [
    (interpolation, padding, align)
    for interpolation in ("bilinear", "nearest", "bicubic")
    for padding in ("zeros", "border", "reflection")
    for align in (False, True)
]


def _with_jit(cases, align_corners_of):
    """`(case, jit)` pairs: every case eagerly and compiled. `torch.compile` and `jax.jit` take
    seconds a function, so under PyTorch and JAX the compiled runs cover the `align_corners=False`
    cases (every mode and padding; the eager runs cover both), which keeps the README's test
    command within its time budget. Under TensorFlow the compiled (XLA) runs of the same fixtures
    are `tests/ops/`' own, so they run there only."""
    pairs = []
    for case in cases:
        pairs.append(pytest.param(*_tuple(case), False, id=f"{_name(case)}-eager"))
        if BACKEND == "tensorflow":
            continue
        if not align_corners_of(case):
            pairs.append(pytest.param(*_tuple(case), True, id=f"{_name(case)}-compiled"))
    return pairs


def _tuple(case):
    return case if isinstance(case, tuple) else (case,)


def _name(case):
    if isinstance(case, dict):
        return _case_id(case)
    interpolation, padding, align = case
    return f"{interpolation}-{padding}-{'corners' if align else 'edges'}"


def _tolerance(*arrays):
    # A handful of taps, each a product of three terms of magnitude <= 15: a few hundred ulps of
    # the largest term bounds every difference of summation order.
    scale = max(1.0, *(float(np.max(np.abs(a), initial=0.0)) for a in arrays))
    return 256 * EPS64 * scale


def _case_id(case):
    corners = "corners" if case["align_corners"] else "edges"
    return f"{case['interpolation']}-{case['padding_mode']}-{corners}"


def _options(case):
    return {k: case[k] for k in ("interpolation", "padding_mode", "align_corners")}


def test_the_ops_return_the_backends_tensors():
    theta = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], "float32")
    grid = stn_keras.affine_grid(theta, (3, 4))
    out = stn_keras.grid_sample(np.ones((1, 5, 5, 2), "float32"), grid)
    for tensor in (grid, out):
        assert (
            keras.ops.is_tensor(tensor)
            and keras.backend.standardize_dtype(tensor.dtype) == "float32"
        )
    assert tuple(grid.shape) == (1, 3, 4, 2) and tuple(out.shape) == (1, 3, 4, 2)


@pytest.mark.parametrize(
    "interpolation, padding_mode, align_corners, jit", _with_jit(MODES, lambda case: case[2])
)
def test_images_match_onnxruntime_in_float64(interpolation, padding_mode, align_corners, jit):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 5, 7, 3))
    grid = rng.uniform(-1.4, 1.4, (2, 4, 6, 2))  # a margin outside the image on every side
    options = dict(
        interpolation=interpolation, padding_mode=padding_mode, align_corners=align_corners
    )
    with float64():
        got = run(lambda x, g: stn_keras.grid_sample(x, g, **options), images, grid, jit=jit)
    want = oracle.grid_sample(images, grid, **options)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=_tolerance(want))


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_volumes_match_onnxruntime_in_float64(interpolation, padding_mode, align_corners):
    rng = np.random.default_rng(2)
    volumes = rng.normal(size=(2, 4, 5, 3, 2))
    grid = rng.uniform(-1.3, 1.3, (2, 3, 4, 5, 3))
    options = dict(
        interpolation=interpolation, padding_mode=padding_mode, align_corners=align_corners
    )
    with float64():
        got = run(lambda x, g: stn_keras.grid_sample(x, g, **options), volumes, grid)
    want = oracle.grid_sample(volumes, grid, **options)
    np.testing.assert_allclose(got, want, rtol=0, atol=_tolerance(want))


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(5, 7), (2, 4), (3, 4, 5)])
def test_affine_grid_matches_onnxruntime_in_float64(size, align_corners):
    rng = np.random.default_rng(3)
    spatial = len(size)
    theta = rng.normal(size=(3, spatial, spatial + 1))
    with float64():
        got = run(lambda t: stn_keras.affine_grid(t, size, align_corners=align_corners), theta)
    want = oracle.affine_grid(theta, size, align_corners)
    # Each coordinate sums N + 1 products of terms below ~3 in magnitude.
    np.testing.assert_allclose(got, want, rtol=0, atol=_tolerance(want))


@pytest.mark.parametrize("align_corners", [False, True])
def test_projective_grid_is_the_homography_of_each_position(align_corners):
    rng = np.random.default_rng(6)
    homography = np.eye(3) + rng.normal(0.0, 0.2, (3, 3, 3))
    homography[0, 2, :2] = [0.0, -1.5]  # w crosses 0 inside the image: the guard keeps |w| >= 1e-6
    size = (4, 6)
    with float64():
        got = run(
            lambda h: stn_keras.projective_grid(h, size, align_corners=align_corners), homography
        )
    # The closed form: (x', y', w) = H (x, y, 1) at PyTorch's pixel positions, divided by w.
    positions = oracle.affine_grid(np.eye(2, 3)[None], size, align_corners)[0]  # H x W x 2
    points = np.concatenate([positions, np.ones((*size, 1))], -1)
    mapped = np.einsum("bjk,hwk->bhwj", homography, points)
    w = mapped[..., 2:]
    w = np.where(w < 0, np.minimum(w, -1e-6), np.maximum(w, 1e-6))
    want = mapped[..., :2] / w
    # Three products of terms below ~3 each, then a division: relative to |w|'s smallest value.
    atol = 64 * EPS64 * np.abs(want).max() / min(1.0, np.abs(w).min())
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


@pytest.mark.parametrize("align_corners", [False, True])
def test_a_single_output_pixel_sits_at_the_centre(align_corners):
    # PyTorch's rule (onnxruntime's AffineGrid differs for align_corners=True): a lone pixel sits
    # at 0, so it reads theta's translation.
    theta = np.array([[[2.0, 3.0, 0.25], [5.0, 7.0, -0.5]]], "float32")
    grid = run(lambda t: stn_keras.affine_grid(t, (1, 1), align_corners=align_corners), theta)
    np.testing.assert_array_equal(grid, [[[[0.25, -0.5]]]])


@pytest.mark.parametrize(
    "case, jit", _with_jit(FIXTURES["borders"], lambda case: case["align_corners"])
)
def test_gradients_at_exact_borders_and_folds_match_pytorch(case, jit):
    images, grid, upstream = border_inputs(case["align_corners"])
    options = _options(case)
    with float64():
        got = value_and_grads(
            lambda x, g: stn_keras.grid_sample(x, g, **options), [images, grid], upstream, jit
        )
    for name, value in zip(("output", "d_images", "d_grid"), got, strict=True):
        want = np.array(case[name])
        np.testing.assert_allclose(value, want, rtol=0, atol=_tolerance(want), err_msg=name)


@pytest.mark.parametrize(
    "case, jit", _with_jit(FIXTURES["nan_images"], lambda case: case["align_corners"])
)
def test_a_nan_pixel_spreads_only_where_pytorch_spreads_it(case, jit):
    images, theta = nan_inputs_numpy()
    options = _options(case)

    def sample(images, theta):
        grid = stn_keras.affine_grid(theta, (8, 8), align_corners=options["align_corners"])
        return stn_keras.grid_sample(images, grid, **options)

    with float64():
        out, _, _ = value_and_grads(sample, [images, theta], np.ones((1, 8, 8, 1)), jit)
        grid = run(lambda t: stn_keras.affine_grid(t, (8, 8), options["align_corners"]), theta)
        _, _, d_grid = value_and_grads(
            lambda x, g: stn_keras.grid_sample(x, g, **options),
            [images, grid],
            np.ones((1, 8, 8, 1)),
            jit,
        )
    out_not_finite = np.argwhere(~np.isfinite(out)).tolist()
    if BACKEND == "torch" and jit:
        # torch.compile replaces PyTorch's kernel by its decomposition of `grid_sampler_2d`
        # (torch/_decomp, pytorch/pytorch#84350), which weighs a tap outside the image by 0 and
        # so spreads a NaN pixel to its neighbours (0 * NaN). A deviation of PyTorch's compiler
        # from its own eager kernel, kept visible here: everything eager marks, and more.
        assert all(index in out_not_finite for index in case["output_not_finite"])
        return
    assert out_not_finite == case["output_not_finite"]
    not_finite = np.argwhere(~np.isfinite(d_grid)).tolist()
    # PyTorch multiplies a NaN coordinate gradient by the clip's zero slope (NaN); a compiler may
    # rewrite a product with a 0/1 mask into a select (0). Never more than PyTorch's.
    assert all(index in case["d_grid_not_finite"] for index in not_finite)
    if not jit:
        assert not_finite == case["d_grid_not_finite"]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_a_non_finite_grid_point_reads_zero_with_zero_gradients(interpolation, padding_mode):
    images = np.ones((2, 4, 4, 1))
    images[0, 0, 0, 0] = np.nan
    grid = np.zeros((2, 1, 3, 2))
    grid[:, 0, 0, 0] = np.nan
    grid[:, 0, 1, 1] = np.inf
    grid[:, 0, 2, 0] = -np.inf
    options = dict(interpolation=interpolation, padding_mode=padding_mode)
    with float64():
        out, d_images, d_grid = value_and_grads(
            lambda x, g: stn_keras.grid_sample(x, g, **options),
            [images, grid],
            np.ones((2, 1, 3, 1)),
        )
    for value in (out, d_images, d_grid):
        np.testing.assert_array_equal(value, 0.0)


@pytest.mark.parametrize("padding_mode, expected", [("zeros", 0.0), ("border", 5.0)])
def test_finite_far_out_points_follow_the_padding_mode(padding_mode, expected):
    images = np.full((1, 3, 3, 1), 5.0, "float32")
    grid = np.array([[[[1e30, 0.0], [-3e38, 3e38]]]], "float32")
    out = run(lambda x, g: stn_keras.grid_sample(x, g, padding_mode=padding_mode), images, grid)
    np.testing.assert_array_equal(out, expected)


def test_identity_stn_first_step_theta_gradient_matches_pytorch():
    images, upstream = identity_stn_inputs()
    theta = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])

    def stn(theta, images):
        grid = stn_keras.affine_grid(theta, (28, 28), align_corners=True)
        return stn_keras.grid_sample(images, grid, padding_mode="border", align_corners=True)

    with float64():
        _, d_theta, _ = value_and_grads(stn, [theta, images], upstream)
    want = np.array(FIXTURES["identity_stn"]["d_theta"])
    # 784 terms of magnitude <= 2 each.
    np.testing.assert_allclose(d_theta, want, rtol=0, atol=784 * 4 * 16 * EPS64)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_the_output_keeps_the_images_dtype_and_computes_in_float32(dtype):
    rng = np.random.default_rng(4)
    images = rng.uniform(size=(2, 6, 6, 3)).astype("float32")
    grid = rng.uniform(-1, 1, (2, 5, 5, 2)).astype("float32")
    low = keras.ops.cast(keras.ops.convert_to_tensor(images), dtype)
    out = stn_keras.grid_sample(low, keras.ops.convert_to_tensor(grid))
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    # The images rounded to `dtype`, sampled in float32, rounded once more.
    rounded = keras.ops.convert_to_numpy(keras.ops.cast(low, "float32"))
    want = oracle.grid_sample(rounded, grid, "bilinear", "zeros", False)
    ulp = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24}[dtype]
    got = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
    np.testing.assert_allclose(got, want, rtol=0, atol=ulp + 16 * 2.0**-24)


def test_one_compiled_function_takes_several_batch_sizes_forward_and_backward():
    # torch.compile makes the batch size symbolic once it has seen two (automatic dynamic shapes);
    # PyTorch's F.affine_grid then fails in the backward pass, which our kernel avoids.
    def sample(images, theta):
        return stn_keras.grid_sample(images, stn_keras.affine_grid(theta, (3, 5)))

    fn = compiled(sample)
    rng = np.random.default_rng(5)
    for batch in (1, 3, 4):
        images = rng.normal(size=(batch, 4, 4, 2)).astype("float32")
        theta = oracle.random_thetas(rng, batch).astype("float32")
        upstream = rng.normal(size=(batch, 3, 5, 2)).astype("float32")
        got = value_and_grads(fn, [images, theta], upstream)
        eager = value_and_grads(sample, [images, theta], upstream)
        want = oracle.grid_sample(
            images, oracle.affine_grid(theta, (3, 5), False), "bilinear", "zeros", False
        )
        # float32 coordinates (4 pixels per unit at most) and 4 taps of values below 5.
        np.testing.assert_allclose(got[0], want, rtol=0, atol=64 * EPS32 * np.abs(images).max())
        for name, a, b in zip(("d_images", "d_theta"), got[1:], eager[1:], strict=True):
            # Each entry sums up to 15 output pixels' terms (upstream x weight or slope x value).
            scale = np.abs(upstream).max() * max(1.0, np.abs(images).max()) * 15
            np.testing.assert_allclose(a, b, rtol=0, atol=64 * EPS32 * scale, err_msg=name)


@pytest.mark.parametrize(
    "images, grid, kwargs, match",
    [
        ((2, 4, 4), (2, 3, 3, 2), {}, r"images.shape=\(2, 4, 4\)"),
        ((2, 4, 4, 1), (2, 3, 3, 3), {}, "last axis of size 2"),
        ((2, 4, 4, 1), (3, 3, 3, 2), {}, "same batch size"),
        ((1, 4, 4, 4, 1), (1, 2, 2, 2, 3), {"interpolation": "bicubic"}, "Bicubic"),
        ((1, 4, 4, 1), (1, 2, 2, 2), {"padding_mode": "wrap"}, "padding_mode"),
        ((1, 4, 4, 1), (1, 2, 2, 2), {"align_corners": 1}, "align_corners"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(images, grid, kwargs, match):
    with pytest.raises(ValueError, match=match):
        stn_keras.grid_sample(np.zeros(images, "float32"), np.zeros(grid, "float32"), **kwargs)


def test_integer_images_and_bad_thetas_are_refused():
    with pytest.raises(ValueError, match="must be floating"):
        stn_keras.grid_sample(np.zeros((1, 4, 4, 1), "int32"), np.zeros((1, 2, 2, 2), "float32"))
    with pytest.raises(ValueError, match="theta"):
        stn_keras.affine_grid(np.zeros((1, 2, 2), "float32"), (3, 3))
    with pytest.raises(ValueError, match="size"):
        stn_keras.affine_grid(np.zeros((1, 2, 3), "float32"), (0, 3))
