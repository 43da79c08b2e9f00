"""The transform families a spatial transformer can regress, behind one small interface.

A `Transform` knows how many parameters it takes, which parameter vector is the identity, and how to
turn a batch of flat parameter vectors `(B, P)` into a sampling grid `(B, H_out, W_out, 2)`. The layers
use only this interface, so adding a family here makes it available to `SpatialTransformer`.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from stn_keras.ops import grids
from stn_keras.ops.validation import check_choice


@dataclasses.dataclass(frozen=True)
class Transform:
    """A transform family.

    Attributes:
        name: the family's name, as accepted by `get_transform`.
        identity: float64 numpy vector `(P,)` of the parameters of the identity transform.
        grid_fn: `(params (B, P), size (H_out, W_out), align_corners) -> grid (B, H_out, W_out, 2)`.
        options: family-specific constructor options, for serialisation.
    """

    name: str
    identity: np.ndarray
    grid_fn: Callable
    options: dict = dataclasses.field(default_factory=dict)

    @property
    def num_params(self):
        """Number of parameters `P` the localisation network regresses."""
        return int(self.identity.shape[0])

    def grid(self, params, size, align_corners=False):
        """Sampling grid `(B, H_out, W_out, 2)` of flat parameters `params` `(B, P)`."""
        params = tf.convert_to_tensor(params)
        if params.shape.rank != 2 or params.shape[-1] not in (self.num_params, None):
            raise ValueError(
                f"The {self.name!r} transform takes parameters of shape (B, {self.num_params}). "
                f"Received: params.shape={params.shape}"
            )
        return self.grid_fn(params, size, align_corners)


def _affine():
    identity = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])

    def grid_fn(params, size, align_corners):
        theta = tf.reshape(params, [-1, 2, 3])  # Bx2x3
        return grids.affine_grid(theta, size, align_corners=align_corners)

    return Transform("affine", identity, grid_fn)


_FACTORIES = {"affine": _affine}
TRANSFORMS = tuple(_FACTORIES)


def get_transform(name, **options):
    """The `Transform` called `name`.

    Args:
        name: one of `TRANSFORMS`.
        **options: family-specific options.

    Returns:
        A `Transform`.

    Raises:
        ValueError: for an unknown `name`.
    """
    check_choice("transform", name, TRANSFORMS)
    return _FACTORIES[name](**options)
