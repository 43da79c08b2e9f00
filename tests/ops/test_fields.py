"""Deformation fields: `warp` against onnxruntime's GridSample on base grid + flow, closed-form shifts,
velocity integration's properties, field algebra, finite-difference gradients and bad input."""

import functools
import itertools

import numpy as np
import pytest
import tensorflow as tf

from stn_keras import PADDING_MODES
from stn_keras.ops.fields import (
    affine_to_flow,
    compose_flows,
    integrate_velocity,
    jacobian_determinant,
    resize_flow,
    warp,
)
from stn_keras.testing.ops import run_op
from tests import oracle


def _smooth_field(rng, shape, amplitude):
    """A smooth random field: a few low-frequency sines per component."""
    batch, *size, n = shape
    grids = np.meshgrid(*(np.linspace(0, 1, s) for s in size), indexing="ij")
    field = np.zeros(shape)
    for b, k in itertools.product(range(batch), range(n)):
        for _ in range(2):
            freq = rng.uniform(0.5, 1.5, len(size))
            phase = rng.uniform(0, 2 * np.pi)
            field[b, ..., k] += np.sin(
                sum(f * g * np.pi for f, g in zip(freq, grids, strict=True)) + phase
            )
    return amplitude * field / 2.0


CASES = {"image": ((2, 5, 7, 3), (2, 5, 7, 2)), "volume": ((2, 4, 3, 5, 2), (2, 4, 3, 5, 3))}


# Every mode eagerly; under XLA (the same graph, compiled) bilinear in every padding.
WARP_MODES = [
    (p, i, m)
    for p in PADDING_MODES
    for i in ("bilinear", "nearest")
    for m in ("eager", "xla")
    if m == "eager" or i == "bilinear"
]


@pytest.mark.parametrize("padding_mode, interpolation, mode", WARP_MODES)
@pytest.mark.parametrize("kind", CASES)
def test_warp_matches_onnxruntime_on_base_grid_plus_flow(kind, padding_mode, interpolation, mode):
    rng = np.random.default_rng(0)
    images_shape, flow_shape = CASES[kind]
    images = rng.normal(size=images_shape)
    flow = rng.uniform(-2.5, 2.5, size=flow_shape)
    options = dict(interpolation=interpolation, padding_mode=padding_mode)
    got = run_op(warp, images, flow, mode=mode, **options)
    want = oracle.grid_sample(images, oracle.grid_of_flow(flow), align_corners=False, **options)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", CASES)
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_constant_integer_flow_is_an_exact_shift_with_zero_fill(kind, interpolation):
    images_shape, flow_shape = CASES[kind]
    images = np.arange(np.prod(images_shape), dtype=np.float64).reshape(images_shape)
    shift = np.array([1, -2, 1][: flow_shape[-1]])
    flow = np.broadcast_to(shift, flow_shape).astype(np.float64)
    out = warp(images, flow, interpolation=interpolation).numpy()
    want = np.zeros_like(images)
    size = images_shape[1:-1]
    for index in itertools.product(*(range(n) for n in size)):
        source = tuple(np.add(index, shift))
        if all(0 <= s < n for s, n in zip(source, size, strict=True)):
            want[(slice(None), *index)] = images[(slice(None), *source)]
    # The pixel positions p + shift go through normalised coordinates and back: a few float64 ulps
    # of the largest position, times values below 400.
    np.testing.assert_allclose(out, want, rtol=0, atol=400 * 16 * 2**-52 * 4)


@pytest.mark.parametrize("kind", CASES)
def test_ij_and_xy_agree_after_swapping_components(kind):
    rng = np.random.default_rng(1)
    images_shape, flow_shape = CASES[kind]
    images, flow = rng.normal(size=images_shape), rng.uniform(-2, 2, size=flow_shape)
    ij = warp(images, flow, indexing="ij").numpy()
    xy = warp(images, flow[..., ::-1].copy(), indexing="xy").numpy()
    np.testing.assert_array_equal(ij, xy)


@pytest.mark.parametrize("kind", CASES)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
def test_warp_gradient_matches_finite_differences(kind, jit):
    rng = np.random.default_rng(2)
    images_shape, flow_shape = CASES[kind]
    images = rng.normal(size=(1, *images_shape[1:-1], 2))
    # Away from integer displacements, where bilinear interpolation has kinks.
    flow = rng.uniform(-1.4, 1.4, size=(1, *flow_shape[1:])) + 0.25
    fn = functools.partial(warp, padding_mode="border")
    (d_images, fd_images), (d_flow, fd_flow) = oracle.batched_jacobians(fn, images, flow, jit=jit)
    np.testing.assert_allclose(d_images, fd_images, atol=1e-6, err_msg="d/dimages")
    np.testing.assert_allclose(d_flow, fd_flow, atol=1e-5, err_msg="d/dflow")


@pytest.mark.parametrize("mode", ["eager", "xla"])
def test_non_finite_displacements_read_zero_and_spare_other_samples(mode):
    rng = np.random.default_rng(8)
    images, flow = rng.normal(size=(2, 4, 5, 1)), rng.uniform(-1, 1, size=(2, 4, 5, 2))
    flow[0, 1, 2] = [np.nan, 0.0]
    flow[0, 3, 0] = [0.0, np.inf]
    images[1, 0, 0] = np.nan  # sample 1's NaN pixel never reaches sample 0
    out = run_op(warp, images, flow, mode=mode, padding_mode="border").numpy()
    np.testing.assert_array_equal(out[0, 1, 2], 0.0)
    np.testing.assert_array_equal(out[0, 3, 0], 0.0)
    assert np.isfinite(out[0]).all()


# ---- velocity integration -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CASES)
def test_zero_velocity_integrates_to_zero(kind):
    _, flow_shape = CASES[kind]
    np.testing.assert_array_equal(integrate_velocity(np.zeros(flow_shape)).numpy(), 0.0)


@pytest.mark.parametrize("kind", CASES)
def test_constant_velocity_integrates_to_itself(kind):
    _, flow_shape = CASES[kind]
    velocity = np.broadcast_to([0.7, -1.3, 0.4][: flow_shape[-1]], flow_shape).astype(np.float64)
    # Border padding reads a constant field as itself everywhere, so every squaring doubles it.
    np.testing.assert_allclose(integrate_velocity(velocity).numpy(), velocity, rtol=0, atol=1e-12)


def test_steps_zero_returns_the_velocity():
    velocity = np.random.default_rng(3).normal(size=(1, 4, 4, 2))
    np.testing.assert_array_equal(integrate_velocity(velocity, steps=0).numpy(), velocity)


@pytest.mark.parametrize("shape", [(1, 24, 24, 2), (1, 16, 16, 16, 3)])
def test_opposite_velocities_compose_to_nearly_the_identity(shape):
    velocity = _smooth_field(np.random.default_rng(4), shape, amplitude=1.5)
    forward = integrate_velocity(velocity, steps=7).numpy()
    backward = integrate_velocity(-velocity, steps=7)
    composed = compose_flows(forward, backward).numpy()
    interior = (slice(None),) + (slice(3, -3),) * (len(shape) - 2)
    assert np.abs(forward[interior]).max() > 1.0  # a real deformation, not a trivial one
    # What is left is the interpolation error of the squarings and the composition: a few percent
    # of the displacement on fields that vary over a few pixels (16 voxels, 1.5 periods).
    assert np.abs(composed[interior]).max() < 0.05 * np.abs(forward[interior]).max()


@pytest.mark.parametrize("shape, amplitude", [((2, 32, 32, 2), 10.0), ((1, 16, 16, 16, 3), 3.0)])
def test_smooth_velocity_gives_a_positive_jacobian_determinant_everywhere(shape, amplitude):
    # Large enough that the plain displacement field of the same size folds.
    velocity = _smooth_field(np.random.default_rng(5), shape, amplitude=amplitude)
    assert (jacobian_determinant(velocity).numpy() <= 0).any()
    assert (jacobian_determinant(integrate_velocity(velocity)).numpy() > 0).all()


# ---- field algebra ------------------------------------------------------------------------------------


def test_constant_flows_compose_to_their_sum():
    first = np.broadcast_to([1.0, -0.5], (1, 6, 6, 2))
    second = np.broadcast_to([0.25, 2.0], (1, 6, 6, 2))
    np.testing.assert_allclose(compose_flows(first, second).numpy(), first + second, atol=1e-12)


def test_composed_flow_warps_like_the_two_warps_in_turn():
    rng = np.random.default_rng(6)
    images = (
        np.sin(np.linspace(0, 3, 20))[None, :, None, None]
        * np.cos(np.linspace(0, 2, 20))[None, None, :, None]
    )
    first = _smooth_field(rng, (1, 20, 20, 2), amplitude=1.0)
    second = _smooth_field(rng, (1, 20, 20, 2), amplitude=1.0)
    once = warp(images, compose_flows(first, second)).numpy()
    twice = warp(warp(images, first), second).numpy()
    interior = (slice(None), slice(4, -4), slice(4, -4))
    # The two differ by interpolating `first` and the image once more: small for smooth inputs.
    np.testing.assert_allclose(once[interior], twice[interior], atol=0.02)


@pytest.mark.parametrize("size, new", [((8, 6), (16, 12)), ((4, 6, 8), (2, 3, 4))])
def test_resized_flow_scales_its_vectors_with_the_axes(size, new):
    flow = np.broadcast_to(np.arange(1.0, len(size) + 1), (1, *size, len(size)))
    resized = resize_flow(flow, new).numpy()
    assert resized.shape == (1, *new, len(size))
    np.testing.assert_allclose(
        resized,
        np.broadcast_to(np.arange(1.0, len(size) + 1) * np.divide(new, size), resized.shape),
        atol=1e-12,
    )


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("kind", CASES)
def test_affine_flow_warps_like_grid_sample_of_the_affine_grid(kind, align_corners):
    rng = np.random.default_rng(7)
    images_shape, _ = CASES[kind]
    images = rng.normal(size=images_shape)
    size = images_shape[1:-1]
    if len(size) == 2:
        theta = oracle.random_thetas(rng, 2)
    else:
        theta = np.concatenate(
            [
                np.eye(3)[None] * 0.9 + rng.normal(0, 0.1, (2, 3, 3)),
                rng.uniform(-0.2, 0.2, (2, 3, 1)),
            ],
            -1,
        )
    flow = affine_to_flow(theta, size, align_corners=align_corners)
    got = warp(images, flow, padding_mode="border").numpy()
    want = oracle.grid_sample(
        images, oracle.affine_grid(theta, size, align_corners), "bilinear", "border", align_corners
    )
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_jacobian_determinant_of_an_affine_flow_is_its_linear_part_in_pixels():
    # x -> 1.5 x along W and y -> 0.5 y + 0.2 x along H, in pixels: determinant 0.75 everywhere.
    h, w = np.meshgrid(np.arange(6.0), np.arange(7.0), indexing="ij")
    flow = np.stack([0.5 * h + 0.2 * w - h, 1.5 * w - w], -1)[None]  # "ij": (d_h, d_w)
    np.testing.assert_allclose(jacobian_determinant(flow).numpy(), 0.75, atol=1e-12)
    np.testing.assert_allclose(
        jacobian_determinant(flow[..., ::-1].copy(), indexing="xy").numpy(), 0.75, atol=1e-12
    )


def test_jacobian_determinant_of_a_volume_scaling():
    d, h, w = np.meshgrid(np.arange(4.0), np.arange(5.0), np.arange(6.0), indexing="ij")
    flow = np.stack([d, -0.5 * h, 0.25 * w], -1)[None]  # scales 2, 0.5, 1.25
    np.testing.assert_allclose(jacobian_determinant(flow).numpy(), 1.25, atol=1e-12)


# ---- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "images_shape, flow_shape, message",
    [
        (
            (1, 4, 5, 1),
            (1, 4, 5, 3),
            r"one displacement per spatial axis.*flow.shape=\(1, 4, 5, 3\)",
        ),
        ((1, 4, 5, 6, 1), (1, 4, 5, 6, 2), r"flow.shape=\(1, 4, 5, 6, 2\)"),
        (
            (1, 4, 5, 1),
            (1, 4, 6, 2),
            r"same spatial shape.*images.shape=\(1, 4, 5, 1\), flow.shape=\(1, 4, 6, 2\)",
        ),
        (
            (1, 4, 5, 6, 1),
            (1, 4, 5, 3),
            r"images.shape=\(1, 4, 5, 6, 1\), flow.shape=\(1, 4, 5, 3\)",
        ),
    ],
)
def test_mismatched_fields_are_refused_naming_the_shapes(images_shape, flow_shape, message):
    with pytest.raises(ValueError, match=message):
        warp(tf.zeros(images_shape), tf.zeros(flow_shape))


def test_bicubic_warp_of_a_volume_is_refused():
    with pytest.raises(ValueError, match="Bicubic"):
        warp(tf.zeros((1, 3, 4, 5, 1)), tf.zeros((1, 3, 4, 5, 3)), interpolation="bicubic")


@pytest.mark.parametrize("steps", [-1, 2.0, True])
def test_invalid_steps_are_refused(steps):
    with pytest.raises(ValueError, match=r"steps.*integer >= 0"):
        integrate_velocity(tf.zeros((1, 4, 4, 2)), steps=steps)


def test_unknown_indexing_is_refused():
    with pytest.raises(ValueError, match=r"indexing.*'ij', 'xy'"):
        warp(tf.zeros((1, 4, 4, 1)), tf.zeros((1, 4, 4, 2)), indexing="yx")


@pytest.mark.parametrize("padding_mode, last_column", [("border", 2.0), ("zeros", 1.0)])
def test_integration_padding_at_the_border_in_closed_form(padding_mode, last_column):
    # A constant velocity of 2 pixels along W, one squaring: flow = u + u[p + u] with u = 1 pixel,
    # an exact pixel shift. Inside, u[p + u] = 1; from the last column it reads outside: the edge
    # value 1 with "border" (VoxelMorph 0.2), 0 with "zeros" (MONAI's DVF2DDF, VoxelMorph >= 0.3).
    velocity = np.zeros((1, 3, 5, 2), "float64")
    velocity[..., 1] = 2.0
    flow = integrate_velocity(velocity, steps=1, padding_mode=padding_mode).numpy()
    expected = np.zeros_like(velocity)
    expected[..., 1] = 2.0
    expected[:, :, -1, 1] = last_column
    np.testing.assert_array_equal(flow, expected)


def test_integration_paddings_agree_away_from_the_borders():
    rng = np.random.default_rng(4)
    velocity = np.zeros((1, 16, 16, 2), "float64")
    velocity[:, 4:12, 4:12] = rng.normal(0.0, 0.3, (1, 8, 8, 2))  # vanishes near the borders
    border = integrate_velocity(velocity, steps=5, padding_mode="border").numpy()
    zeros = integrate_velocity(velocity, steps=5, padding_mode="zeros").numpy()
    np.testing.assert_array_equal(border, zeros)


def test_integrate_velocity_layer_keeps_its_padding_mode_in_its_config():
    from stn_keras import IntegrateVelocity

    layer = IntegrateVelocity(steps=np.int64(3), padding_mode="zeros")
    clone = IntegrateVelocity.from_config(layer.get_config())
    assert clone.steps == 3 and clone.padding_mode == "zeros"
    with pytest.raises(ValueError, match="padding_mode"):
        IntegrateVelocity(padding_mode="reflection")


def test_jacobian_determinant_of_a_one_pixel_axis_raises():
    with pytest.raises(ValueError, match=r"at least 2 pixels.*flow.shape=\(1, 1, 4, 2\)"):
        jacobian_determinant(tf.zeros((1, 1, 4, 2)))


@pytest.mark.parametrize(
    "case", oracle.monai_field_cases(), ids=lambda c: "x".join(map(str, c["shape"]))
)
def test_integrate_velocity_with_zeros_padding_matches_monai_dvf2ddf(case):
    velocity = np.array(case["velocity"], "float32")
    flow = integrate_velocity(velocity, steps=case["steps"], padding_mode="zeros").numpy()
    np.testing.assert_allclose(
        flow, np.array(case["dvf2ddf_zeros"]), rtol=0, atol=oracle.MONAI_ATOL
    )
    # MONAI's fields reach the border: the default "border" integration differs there.
    border = integrate_velocity(velocity, steps=case["steps"]).numpy()
    assert np.max(np.abs(border - np.array(case["dvf2ddf_zeros"]))) > 1e-3


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize(
    "case", oracle.monai_field_cases(), ids=lambda c: "x".join(map(str, c["shape"]))
)
def test_warp_matches_monai_warp(case, padding_mode):
    image = np.array(case["image"], "float32")
    ddf = np.array(case["dvf2ddf_zeros"], "float32")
    warped = warp(image, ddf, padding_mode=padding_mode).numpy()
    # One bilinear (trilinear) sample of values in [0, 1]: a few float32 ulps.
    np.testing.assert_allclose(warped, np.array(case["warp"][padding_mode]), rtol=0, atol=1e-6)
