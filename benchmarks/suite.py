"""The benchmark cases: shapes and deterministic inputs."""

import dataclasses

import numpy as np

# What a case measures. "backward_theta" differentiates w.r.t. theta alone (an STN on the
# network's input); "backward_all" w.r.t. images and theta (an STN mid-network). Both include the
# forward pass.
TASKS = ("forward", "backward_theta", "backward_all")


@dataclasses.dataclass(frozen=True)
class Case:
    """One shape: images `(batch, height, width, channels)` warped to `(out_height, out_width)`."""

    batch: int
    height: int
    width: int
    channels: int
    out_height: int
    out_width: int

    @property
    def name(self):
        same = (self.out_height, self.out_width) == (self.height, self.width)
        out = "" if same else f"->{self.out_height}x{self.out_width}"
        return f"{self.batch}x{self.height}x{self.width}x{self.channels}{out}"

    @property
    def out_size(self):
        return (self.out_height, self.out_width)

    @property
    def output_bytes(self):
        """Bytes of the float32 output `(B, H_out, W_out, C)`."""
        return 4 * self.batch * self.out_height * self.out_width * self.channels


def case(batch, height, width, channels, out_size=None):
    """A `Case`; the output has the input's size unless `out_size` is given."""
    out_height, out_width = out_size or (height, width)
    return Case(batch, height, width, channels, out_height, out_width)


SUITE = (
    case(32, 64, 64, 32),
    case(8, 224, 224, 3),
    case(64, 28, 28, 1),
    case(16, 128, 128, 64),
    case(16, 120, 160, 3, out_size=(60, 80)),
)
QUICK_SUITE = (case(4, 16, 16, 3, out_size=(12, 20)),)


def make_inputs(case, seed=0):
    """Deterministic float32 inputs of `case`.

    Args:
        case: a `Case`.
        seed: seed of numpy's generator. Defaults to `0`.

    Returns:
        A dict of numpy arrays: `images` `(B, H, W, C)`, `theta` `(B, 2, 3)` (rotations up to 30
        degrees, zooms of 0.8-1.2, shifts up to 0.2, so a few taps fall outside the image) and
        `upstream` `(B, H_out, W_out, C)`, the output gradient the backward passes start from.
    """
    rng = np.random.default_rng(seed)
    b = case.batch
    angle = rng.uniform(-np.pi / 6, np.pi / 6, b)
    zoom = rng.uniform(0.8, 1.2, b)
    shift = rng.uniform(-0.2, 0.2, (b, 2))
    cos, sin = zoom * np.cos(angle), zoom * np.sin(angle)
    theta = np.stack(
        [np.stack([cos, -sin, shift[:, 0]], -1), np.stack([sin, cos, shift[:, 1]], -1)], 1
    )
    images = rng.standard_normal((b, case.height, case.width, case.channels))
    upstream = rng.standard_normal((b, case.out_height, case.out_width, case.channels))
    return {
        "images": images.astype(np.float32),
        "theta": theta.astype(np.float32),  # Bx2x3
        "upstream": upstream.astype(np.float32),
    }
