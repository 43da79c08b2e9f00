"""Thin-plate-spline (TPS) sampling grids over a regular K x K lattice of control points.

The spline maps an output position `p = (x, y)` (normalised, see `stn_keras.ops.coordinates`) to the
input position it samples:

    f(p) = a_0 + a_x x + a_y y + sum_i w_i U(|p - c_i|),    U(r) = r^2 log r^2,  U(0) = 0,

where the `N = K * K` control points `c_i` sit on a regular lattice spanning [-1, 1]^2 and the
coefficients (each a 2-vector, one per output axis) are fixed by interpolation, `f(c_i) = t_i` for
the targets `t_i`, and by the side conditions `sum_i w_i = sum_i w_i c_i = 0` that keep the affine
part out of the kernel term. That is the linear system

    [[Kc, P], [P^T, 0]] @ [w; a] = [t; 0],    Kc_ij = U(|c_i - c_j|),  P_i = (1, x_i, y_i),

whose matrix depends on the lattice only. Its inverse is computed once, in float64 numpy, when a
`ThinPlateSpline` is built; a grid is then linear in the targets, hence differentiable w.r.t. them,
and the only per-call work is evaluating the kernel at the output positions (any size, also
dynamic).
"""

import functools

import numpy as np
import tensorflow as tf

from stn_keras.ops import coordinates, grids
from stn_keras.ops.validation import check_int


def _kernel(squared_distance):
    """`U = r^2 log r^2` of squared distances `r^2`, with `U(0) = 0` (numpy arrays or tensors)."""
    if isinstance(squared_distance, np.ndarray):
        safe = np.where(squared_distance > 0.0, squared_distance, 1.0)
        return squared_distance * np.log(safe)
    # log(1) = 0 where r == 0, so neither the value nor a gradient through it becomes NaN.
    safe = tf.where(squared_distance > 0.0, squared_distance, tf.ones_like(squared_distance))
    return squared_distance * tf.math.log(safe)


def _check_control_points(control_points):
    """`control_points` as an int K >= 2 (the side of the K x K lattice), else `ValueError`."""
    return check_int("control_points", control_points, minimum=2)


class ThinPlateSpline:
    """A thin-plate spline over a fixed regular K x K lattice of control points.

    Targets are laid out like a tiny sampling grid, `(B, K, K, 2)`: `targets[b, i, j]` is the
    `(x, y)` input position that control point `(i, j)` (row `i` along y, column `j` along x) maps
    to. The identity targets are the control points themselves, `source_points`, which equal
    `affine_grid(identity, (K, K), align_corners=True)[0]`.

    Args:
        control_points: the lattice side K (N = K * K control points). Defaults to `4`, the
            paper's 16 points.

    Raises:
        ValueError: if `control_points` is not an integer >= 2.
    """

    def __init__(self, control_points=4):
        self.control_points = _check_control_points(control_points)
        n = self.num_points
        axis = np.linspace(-1.0, 1.0, self.control_points)
        y, x = np.meshgrid(axis, axis, indexing="ij")  # KxK each
        self.source_points = np.stack([x, y], axis=-1)  # KxKx2, float64
        source = self.source_points.reshape(n, 2)  # Nx2
        affine = np.concatenate([np.ones((n, 1)), source], axis=1)  # Nx3: (1, x, y)
        squared = np.sum((source[:, None, :] - source[None, :, :]) ** 2, axis=-1)  # NxN
        system = np.zeros((n + 3, n + 3))
        system[:n, :n] = _kernel(squared)
        system[:n, n:] = affine
        system[n:, :n] = affine.T
        # The right-hand side is [t; 0], so only the first N columns of the inverse are ever used:
        # [w; a] = solver @ t.
        self._solver = np.linalg.inv(system)[:, :n]  # (N+3)xN

    @property
    def num_points(self):
        """Number of control points `N = K * K`."""
        return self.control_points**2

    def _check_targets(self, targets):
        k = self.control_points
        return grids.check_params(targets, "targets", (k, k, 2), f"(B, {k}, {k}, 2)")

    def coefficients(self, targets):
        """The spline's coefficients for a batch of targets.

        Args:
            targets: float tensor `(B, K, K, 2)`.

        Returns:
            `(weights, affine)`: the kernel weights `w`, `(B, N, 2)`, and the affine part `a`,
            `(B, 3, 2)` with rows for `(1, x, y)`, in `targets`' dtype. An affine motion of the
            control points gives zero kernel weights.

        Raises:
            ValueError: if `targets` is not `(B, K, K, 2)` or not floating.
        """
        targets = self._check_targets(targets)
        coeffs = self._solve(targets, coordinates.compute_dtype(targets.dtype))  # Bx(N+3)x2
        coeffs = tf.cast(coeffs, targets.dtype)
        return coeffs[:, : self.num_points], coeffs[:, self.num_points :]

    def _solve(self, targets, dtype):
        flat = tf.reshape(tf.cast(targets, dtype), [-1, self.num_points, 2])  # BxNx2
        solver = tf.constant(self._solver, dtype)  # (N+3)xN
        return grids.transform_points(solver, tf.transpose(flat, [0, 2, 1]))  # Bx(N+3)x2

    def grid(self, targets, size, align_corners=False):
        """Sampling grid of a batch of splines.

        Args:
            targets: float tensor `(B, K, K, 2)`, see the class docstring.
            size: `(H_out, W_out)`, Python ints or scalar integer tensors (may be dynamic).
            align_corners: see `stn_keras.ops.coordinates`. Defaults to `False`. The control points
                stay at the same normalised positions either way.

        Returns:
            The grid, `(B, H_out, W_out, 2)` with last axis `(x, y)`, in `targets`' dtype. The
            arithmetic runs in at least float32.

        Raises:
            ValueError: if `targets` is not `(B, K, K, 2)` or not floating, or `size` is not a
                pair of positive sizes.
        """
        targets = self._check_targets(targets)
        dtype = coordinates.compute_dtype(targets.dtype)
        base = grids.output_positions(size, align_corners, dtype)  # HxWx3
        points = tf.reshape(base[..., :2], [-1, 2])  # (H*W)x2
        source = tf.constant(self.source_points.reshape(-1, 2), dtype)  # Nx2
        squared = tf.reduce_sum(tf.square(points[:, None, :] - source[None]), axis=-1)  # (H*W)xN
        basis = tf.concat(
            [_kernel(squared), tf.ones_like(points[:, :1]), points], axis=-1
        )  # (H*W)x(N+3), columns matching [w; a]
        coeffs = tf.transpose(self._solve(targets, dtype), [0, 2, 1])  # Bx2x(N+3)
        grid = grids.transform_points(basis, coeffs)  # Bx(H*W)x2
        shape = [coordinates.dim(targets, 0), coordinates.dim(base, 0), coordinates.dim(base, 1), 2]
        return tf.cast(tf.reshape(grid, shape), targets.dtype)  # BxHxWx2


def thin_plate_spline(control_points):
    """The `ThinPlateSpline` of a K x K lattice, built once per K (its kernel matrices are cached).

    Raises:
        ValueError: if `control_points` is not an integer >= 2.
    """
    return _cached_spline(_check_control_points(control_points))


@functools.lru_cache(maxsize=16)
def _cached_spline(control_points):
    return ThinPlateSpline(control_points)


def tps_grid(targets, size, align_corners=False):
    """Sampling grid of a batch of thin-plate splines on a regular K x K lattice of control points.

    The control points sit at `(x_j, y_i)` with `x_j, y_i` in `linspace(-1, 1, K)`; output position
    `(x_j, y_i)` samples the input at `targets[b, i, j]`, and positions in between follow the
    spline (see the module docstring). Identity targets (the control points themselves) reproduce
    the input, and targets moved by an affine map give exactly that map's `affine_grid`.

    Args:
        targets: float tensor `(B, K, K, 2)`, K >= 2: where each control point maps to, last axis
            `(x, y)` normalised. K is read from the static shape.
        size: `(H_out, W_out)`, Python ints or scalar integer tensors (may be dynamic).
        align_corners: see `stn_keras.ops.coordinates`. Defaults to `False`.

    Returns:
        The grid, `(B, H_out, W_out, 2)` with last axis `(x, y)`, in `targets`' dtype. The
        arithmetic runs in at least float32.

    Raises:
        ValueError: if `targets` is not `(B, K, K, 2)` with a static K >= 2, or not floating, or
            `size` is not a pair of positive sizes.

    Example:
        >>> lattice = np.linspace(-1.0, 1.0, 4)
        >>> identity = np.stack(np.meshgrid(lattice, lattice), axis=-1)[None]  # 1x4x4x2, (x, y)
        >>> tps_grid(tf.constant(identity, tf.float32), (8, 8)).shape
        TensorShape([1, 8, 8, 2])
    """
    shape = tf.TensorShape(tf.convert_to_tensor(targets).shape)
    k = shape[1] if shape.rank == 4 else None
    if k is None or k < 2 or shape[2:] != (k, 2):
        raise ValueError(
            "Argument `targets` must have shape (B, K, K, 2) with a static K >= 2. "
            f"Received: targets.shape={shape}"
        )
    return thin_plate_spline(k).grid(targets, size, align_corners=align_corners)
