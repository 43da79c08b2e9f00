"""The benchmark cases: shapes and deterministic inputs."""

import dataclasses
import math

import numpy as np

# What a case measures. "backward_theta" differentiates w.r.t. theta alone (an STN on the
# network's input); "backward_all" w.r.t. images and theta (an STN mid-network). Both include the
# forward pass.
TASKS = ("forward", "backward_theta", "backward_all")
# Warping by a dense displacement field (registration): "warp_forward", and "warp_backward" w.r.t.
# the images and the field (with the forward pass). They run on `WARP_SUITE`.
WARP_TASKS = ("warp_forward", "warp_backward")


@dataclasses.dataclass(frozen=True)
class Case:
    """One shape: images `(batch, height, width, channels)` warped to `(out_height, out_width)`, or
    volumes `(batch, depth, height, width, channels)` warped to `(out_depth, out_height, out_width)`."""

    batch: int
    height: int
    width: int
    channels: int
    out_height: int
    out_width: int
    depth: int | None = None
    out_depth: int | None = None

    @property
    def is_volume(self):
        return self.depth is not None

    @property
    def in_size(self):
        """`(H, W)` or `(D, H, W)`."""
        return ((self.depth,) if self.is_volume else ()) + (self.height, self.width)

    @property
    def out_size(self):
        """`(H_out, W_out)` or `(D_out, H_out, W_out)`."""
        return ((self.out_depth,) if self.is_volume else ()) + (self.out_height, self.out_width)

    @property
    def name(self):
        same = self.out_size == self.in_size
        out = "" if same else "->" + "x".join(map(str, self.out_size))
        return "x".join(map(str, (self.batch, *self.in_size, self.channels))) + out

    @property
    def output_bytes(self):
        """Bytes of the float32 output `(B, *out_size, C)`."""
        return 4 * self.batch * math.prod(self.out_size) * self.channels


def case(batch, *sizes, out_size=None):
    """A `Case` of `case(B, H, W, C)` or `case(B, D, H, W, C)`; the output has the input's size
    unless `out_size` is given."""
    *in_size, channels = sizes
    out = tuple(out_size or in_size)
    if len(in_size) == 3:
        return Case(batch, *in_size[1:], channels, *out[1:], depth=in_size[0], out_depth=out[0])
    return Case(batch, *in_size, channels, *out)


SUITE = (
    case(32, 64, 64, 32),
    case(8, 224, 224, 3),
    case(64, 28, 28, 1),
    case(16, 128, 128, 64),
    case(16, 120, 160, 3, out_size=(60, 80)),
    # Volumes: a batch of small ones, many channels, and the brain-MRI size users run out of memory at.
    case(2, 64, 64, 64, 1),
    case(4, 32, 32, 32, 16),
    case(1, 160, 192, 224, 1),
)
QUICK_SUITE = (case(4, 16, 16, 3, out_size=(12, 20)),)
# The warp's cases: a 2-D batch and the brain-MRI volume (the quick ones smoke-test volumes too).
WARP_SUITE = (case(8, 224, 224, 3), case(1, 160, 192, 224, 1))
QUICK_WARP_SUITE = (case(2, 8, 10, 2), case(1, 4, 6, 8, 1))


def _smooth_flow(rng, batch, size, amplitude=3.0):
    """`(batch, *size, N)` displacements in pixels ("ij"): a few sines of low frequency per
    component, up to `amplitude` pixels, like a registration network's fields (a random field per
    pixel would make every gather a cache miss)."""
    axes = np.meshgrid(*(np.linspace(0.0, 1.0, n) for n in size), indexing="ij")
    flow = np.empty((batch, *size, len(size)))
    for b in range(batch):
        for k in range(len(size)):
            freq = rng.uniform(0.5, 2.0, len(size))
            phase = sum(f * a for f, a in zip(freq, axes, strict=True))
            flow[b, ..., k] = amplitude * np.sin(2 * np.pi * phase + rng.uniform(0, 2 * np.pi))
    return flow


def _volume_thetas(rng, batch):
    """`(batch, 3, 4)`: rotations up to 30 degrees about a random axis, zooms 0.8-1.2, shifts < 0.2."""
    axis = rng.standard_normal((batch, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    angle = rng.uniform(-np.pi / 6, np.pi / 6, batch)[:, None, None]
    cross = np.zeros((batch, 3, 3))
    cross[:, 0, 1], cross[:, 0, 2], cross[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    cross -= cross.transpose(0, 2, 1)
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross  # Rodrigues
    linear = rotation * rng.uniform(0.8, 1.2, (batch, 1, 1))
    return np.concatenate([linear, rng.uniform(-0.2, 0.2, (batch, 3, 1))], axis=-1)


def make_inputs(case, seed=0):
    """Deterministic float32 inputs of `case`.

    Args:
        case: a `Case`.
        seed: seed of numpy's generator. Defaults to `0`.

    Returns:
        A dict of numpy arrays: `images` `(B, *in_size, C)`, `theta` `(B, 2, 3)` or `(B, 3, 4)`
        (rotations up to 30 degrees, zooms of 0.8-1.2, shifts up to 0.2, so a few taps fall outside
        the image), `upstream` `(B, *out_size, C)`, the output gradient the backward passes
        start from, and for the warp `flow` `(B, *in_size, N)` (smooth, up to 3 pixels) and
        `warp_upstream` `(B, *in_size, C)`.
    """
    rng = np.random.default_rng(seed)
    b = case.batch
    if case.is_volume:
        theta = _volume_thetas(rng, b)
    else:
        angle = rng.uniform(-np.pi / 6, np.pi / 6, b)
        zoom = rng.uniform(0.8, 1.2, b)
        shift = rng.uniform(-0.2, 0.2, (b, 2))
        cos, sin = zoom * np.cos(angle), zoom * np.sin(angle)
        theta = np.stack(
            [np.stack([cos, -sin, shift[:, 0]], -1), np.stack([sin, cos, shift[:, 1]], -1)], 1
        )
    images = rng.standard_normal((b, *case.in_size, case.channels))
    upstream = rng.standard_normal((b, *case.out_size, case.channels))
    flow = _smooth_flow(rng, b, case.in_size)
    warp_upstream = rng.standard_normal(images.shape)
    return {
        "images": images.astype(np.float32),
        "theta": theta.astype(np.float32),
        "upstream": upstream.astype(np.float32),
        "flow": flow.astype(np.float32),
        "warp_upstream": warp_upstream.astype(np.float32),
    }
