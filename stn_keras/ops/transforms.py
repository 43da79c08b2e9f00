"""The transform families a spatial transformer can regress, behind one small interface.

A `Transform` knows how many parameters it takes, which parameter vector is the identity, and how
to turn a batch of flat parameter vectors `(B, P)` into a sampling grid `(B, H_out, W_out, 2)`, or
`(B, D_out, H_out, W_out, 3)` for a volume family (`spatial_dims=3`: `"affine"` and `"attention"`).
The layers use only this interface, so adding a family here makes it available to
`SpatialTransformer`.
"""

import dataclasses
import inspect
from collections.abc import Callable

import numpy as np
from keras import ops

from stn_keras.ops import grids, tps
from stn_keras.ops.validation import (
    as_tensor,
    check_choice,
    check_int,
    shape_text,
    static_shape,
)


@dataclasses.dataclass(frozen=True)
class Transform:
    """A transform family.

    Attributes:
        name: the family's name, as accepted by `get_transform`.
        identity: float64 numpy vector `(P,)` of the parameters of the identity transform.
        grid_fn: `(params (B, P), size, align_corners) -> grid`: `size` `(H_out, W_out)` gives
            `(B, H_out, W_out, 2)`; for a volume family `(D_out, H_out, W_out)` gives
            `(B, D_out, H_out, W_out, 3)`.
        options: family-specific constructor options, for serialisation.
        spatial_dims: 2 for images, 3 for volumes.
    """

    name: str
    identity: np.ndarray
    grid_fn: Callable
    options: dict = dataclasses.field(default_factory=dict)
    spatial_dims: int = 2

    @property
    def num_params(self):
        """Number of parameters `P` the localisation network regresses."""
        return int(self.identity.shape[0])

    def grid(self, params, size, align_corners=False):
        """Sampling grid of flat parameters `params` `(B, P)` (see `grid_fn`)."""
        params = as_tensor(params)
        shape = static_shape(params)
        if shape is None or len(shape) != 2 or shape[-1] not in (self.num_params, None):
            raise ValueError(
                f"The {self.name!r} transform takes parameters of shape (B, {self.num_params}). "
                f"Received: params.shape={shape_text(params)}"
            )
        return self.grid_fn(params, size, align_corners)


def _attention(spatial_dims):
    # (s, t_x, t_y[, t_z]): see `grids.attention_grid`.
    identity = np.array([1.0] + [0.0] * spatial_dims)

    def grid_fn(params, size, align_corners):
        params = ops.reshape(params, [-1, spatial_dims + 1])  # Bx(N+1)
        return grids.attention_grid(params, size, align_corners=align_corners)

    return Transform("attention", identity, grid_fn, spatial_dims=spatial_dims)


def _affine(spatial_dims):
    # Row-major theta (B, N, N + 1): (a11, a12, t_x, a21, a22, t_y) for images, 12 entries for
    # volumes, see `grids.affine_grid`.
    identity = np.eye(spatial_dims, spatial_dims + 1).reshape(-1)

    def grid_fn(params, size, align_corners):
        theta = ops.reshape(params, [-1, spatial_dims, spatial_dims + 1])  # BxNx(N+1)
        return grids.affine_grid(theta, size, align_corners=align_corners)

    return Transform("affine", identity, grid_fn, spatial_dims=spatial_dims)


def _projective(spatial_dims):
    # The first 8 row-major entries of the homography (h11, h12, h13, h21, h22, h23, h31, h32), with
    # h33 fixed to 1, see `grids.projective_grid`.
    identity = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])

    def grid_fn(params, size, align_corners):
        ones = ops.ones_like(params[:, :1])  # Bx1
        homography = ops.reshape(ops.concatenate([params, ones], axis=-1), [-1, 3, 3])  # Bx3x3
        return grids.projective_grid(homography, size, align_corners=align_corners)

    return Transform("projective", identity, grid_fn)


def _similarity(spatial_dims):
    # (a, b, t_x, t_y): theta [[a, -b, t_x], [b, a, t_y]], a = s cos(angle), b = s sin(angle):
    # linear in the parameters, so the regression's gradients stay well scaled.
    identity = np.array([1.0, 0.0, 0.0, 0.0])

    def grid_fn(params, size, align_corners):
        a, b, t_x, t_y = ops.unstack(ops.reshape(params, [-1, 4]), axis=-1)
        theta = ops.reshape(ops.stack([a, -b, t_x, b, a, t_y], axis=-1), [-1, 2, 3])
        return grids.affine_grid(theta, size, align_corners=align_corners)

    return Transform("similarity", identity, grid_fn)


def _rigid(spatial_dims):
    # (angle, t_x, t_y), the angle in radians: theta [[cos, -sin, t_x], [sin, cos, t_y]].
    identity = np.zeros(3)

    def grid_fn(params, size, align_corners):
        angle, t_x, t_y = ops.unstack(ops.reshape(params, [-1, 3]), axis=-1)
        cos, sin = ops.cos(angle), ops.sin(angle)
        theta = ops.reshape(ops.stack([cos, -sin, t_x, sin, cos, t_y], axis=-1), [-1, 2, 3])
        return grids.affine_grid(theta, size, align_corners=align_corners)

    return Transform("rigid", identity, grid_fn)


# Named control-point layouts of `"tps"`: text rectifiers' 20 fiducials (`tps.fiducial_points`).
TPS_LAYOUTS = {"aster": (0.05, 0.05), "clovaai": (0.0, 0.0)}


def _tps_points(control_points):
    """`(spline, option)`: the spline of a `"tps"` option and its serialisable form."""
    if isinstance(control_points, str):
        check_choice("control_points", control_points, tuple(TPS_LAYOUTS))
        points = tps.fiducial_points(20, TPS_LAYOUTS[control_points])
        return tps.point_spline(points, name="control_points"), control_points
    if np.ndim(control_points) == 0:
        spline = tps.thin_plate_spline(control_points)  # a K x K lattice
        return spline, spline.control_points
    spline = tps.point_spline(control_points, name="control_points")
    return spline, spline.points.tolist()


def _tps(spatial_dims, control_points=4):
    # The targets of the control points, flattened from (K, 2) (x, y per point): for an int K,
    # the K x K lattice in row-major order, x fastest, see `tps.ThinPlateSpline`.
    spline, option = _tps_points(control_points)
    k = spline.num_points

    def grid_fn(params, size, align_corners):
        return tps.PointSpline.grid(spline, ops.reshape(params, [-1, k, 2]), size, align_corners)

    identity = spline.points.reshape(-1)
    return Transform("tps", identity, grid_fn, {"control_points": option})


# The families that also transform volumes (the others are 2-D only).
VOLUME_TRANSFORMS = ("attention", "affine")

_FACTORIES = {
    "attention": _attention,
    "similarity": _similarity,
    "rigid": _rigid,
    "affine": _affine,
    "projective": _projective,
    "tps": _tps,
}
TRANSFORMS = tuple(_FACTORIES)


def get_transform(name, spatial_dims=2, **options):
    """The `Transform` called `name`, for images (`spatial_dims=2`) or volumes (`spatial_dims=3`).

    The families and their parameters `P` (each documented at its grid function):

    * `"attention"`: 3, `(s, t_x, t_y)`, `grids.attention_grid`; volumes: 4, `(s, t_x, t_y, t_z)`;
    * `"affine"`: 6, row-major `theta`, `grids.affine_grid`; volumes: 12, the row-major `(3, 4)`
      theta;
    * `"projective"`: 8, the row-major homography with `h33 = 1`, `grids.projective_grid`;
    * `"similarity"`: 4, `(a, b, t_x, t_y)` for `theta = [[a, -b, t_x], [b, a, t_y]]`
      (isotropic scale `sqrt(a^2 + b^2)`, rotation `atan2(b, a)`); images only;
    * `"rigid"`: 3, `(angle, t_x, t_y)`, the angle in radians; images only;
    * `"tps"`: `2 * K`, the flattened `(K, 2)` input positions of the K control points
      (`tps.PointSpline`). Option `control_points`: an int K >= 2 for the K x K lattice (the
      default, 4: the paper's 16 points, `2 K^2` parameters), `"aster"` or `"clovaai"` for the
      text rectifiers' 20 fiducials (`tps.fiducial_points`), or any `(K, 2)` output positions.

    `"similarity"` and `"rigid"` act in normalised coordinates, where an image spans [-1, 1] along
    both axes whatever its shape. On a W x H image with W != H the pixel-space map is therefore
    `diag(W, H) @ R @ diag(1 / W, 1 / H)`: a rotation by 90 degrees of a 2:1 image stretches it by
    2 along one axis and shrinks it along the other. Scale and translation are unaffected; on
    square images (and squares in normalised units) they are exactly what their names say.

    Args:
        name: one of `TRANSFORMS`; for volumes one of `VOLUME_TRANSFORMS`.
        spatial_dims: 2 for images, 3 for volumes. Defaults to `2`.
        **options: family-specific options (only `"tps"` takes any).

    Returns:
        A `Transform`.

    Raises:
        ValueError: for an unknown `name`, a 2-D-only family on volumes, an option the family does
            not take, or an invalid option value.

    Example:
        >>> get_transform("tps", control_points=3).num_params
        18
        >>> get_transform("affine", spatial_dims=3).num_params
        12
    """
    check_choice("transform", name, TRANSFORMS)
    spatial_dims = check_int("spatial_dims", spatial_dims, minimum=2, maximum=3)
    if spatial_dims == 3 and name not in VOLUME_TRANSFORMS:
        raise ValueError(
            f"The {name!r} transform is defined on images only; volumes take one of "
            f"{VOLUME_TRANSFORMS}. Received: transform={name!r} for a volume (B, D, H, W, C)"
        )
    factory = _FACTORIES[name]
    accepted = tuple(inspect.signature(factory).parameters)[1:]  # after `spatial_dims`
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for the {name!r} transform. Expected options among "
            f"{accepted}. Received: {options!r}"
        )
    return factory(spatial_dims, **options)
