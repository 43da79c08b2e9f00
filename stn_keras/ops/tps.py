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

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from stn_keras.ops import coordinates, grids
from stn_keras.ops.validation import as_tensor, check_int, shape_text, static_shape


def _kernel(squared_distance):
    """`U = r^2 log r^2` of squared distances `r^2`, with `U(0) = 0` (numpy arrays or tensors)."""
    if isinstance(squared_distance, np.ndarray):
        safe = np.where(squared_distance > 0.0, squared_distance, 1.0)
        return squared_distance * np.log(safe)
    # log(1) = 0 where r == 0, so neither the value nor a gradient through it becomes NaN.
    safe = ops.where(squared_distance > 0.0, squared_distance, ops.ones_like(squared_distance))
    return squared_distance * ops.log(safe)


def _check_control_points(control_points):
    """`control_points` as an int K >= 2 (the side of the K x K lattice), else `ValueError`."""
    return check_int("control_points", control_points, minimum=2)


def _check_regularization(regularization):
    value = float(regularization) if np.isscalar(regularization) else float("nan")
    if not np.isfinite(value) or value < 0.0:
        raise ValueError(
            "Argument `regularization` must be a finite number >= 0. "
            f"Received: regularization={regularization!r}"
        )
    return value


def _system(points, regularization):
    """The spline's `(K + 3, K + 3)` float64 matrix `[[U + 2 lambda I, P], [P^T, 0]]` for `(K, 2)`
    control points (`U = r^2 log r^2` is twice SciPy's kernel, so SciPy's smoothing lambda is 2
    lambda here)."""
    n = len(points)
    affine = np.concatenate([np.ones((n, 1)), points], axis=1)  # Kx3: (1, x, y)
    squared = np.sum((points[:, None, :] - points[None, :, :]) ** 2, axis=-1)  # KxK
    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = _kernel(squared) + 2.0 * regularization * np.eye(n)
    system[:n, n:] = affine
    system[n:, :n] = affine.T
    return system


# A system this ill-conditioned has no unique spline: collinear points (no affine part) or, without
# regularization, a repeated point (two equal rows).
_MAX_CONDITION = 1e12


def _check_layout(points, regularization, name):
    if len(points) < 3:
        raise ValueError(
            f"Argument `{name}` must hold at least 3 points (a thin-plate spline has an affine "
            f"part). Received: {len(points)} points"
        )
    condition = np.linalg.cond(_system(points, regularization))
    if not condition < _MAX_CONDITION:
        raise ValueError(
            f"Argument `{name}` is degenerate: the points are collinear, or two coincide (which "
            f"`regularization` > 0 allows), so no unique spline passes through them. "
            f"Received: {name}={np.round(points, 6).tolist()}"
        )


class PointSpline:
    """A thin-plate spline through fixed control points, given in the output's normalised coordinates.

    The spline maps output position `p` to `f(p)` (module docstring, with the control points `c_i`
    anywhere); a batch of *sources* `(B, K, 2)`, where each control point lands in the input, fixes
    its coefficients. The system's inverse is computed once, in float64 numpy: a grid is linear in
    the sources, hence differentiable w.r.t. them.

    Args:
        control_points: `(K, 2)` positions `(x, y)`, K >= 3, not all on one line.
        regularization: lambda >= 0 added to the kernel's diagonal, in SciPy's units
            (`RBFInterpolator(kernel="thin_plate_spline", smoothing=lambda)`): 0 interpolates
            exactly, larger values give a smoother, least-squares spline. Defaults to `0.0`.

    Raises:
        ValueError: if the points are not `(K, 2)` finite numbers with K >= 3, are collinear or
            (without regularization) repeated, or `regularization` is negative or not finite.
    """

    def __init__(self, control_points, regularization=0.0, name="control_points"):
        points = np.asarray(control_points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or not np.all(np.isfinite(points)):
            raise ValueError(
                f"Argument `{name}` must be finite `(K, 2)` positions (x, y). "
                f"Received: {name}.shape={points.shape}"
            )
        self.regularization = _check_regularization(regularization)
        _check_layout(points, self.regularization, name)
        self.points = points
        # The right-hand side is [sources; 0], so only the first K columns of the inverse are used:
        # [w; a] = solver @ sources.
        self._solver = np.linalg.inv(_system(points, self.regularization))[:, : len(points)]

    @property
    def num_points(self):
        """Number of control points `K`."""
        return len(self.points)

    def _check_sources(self, sources):
        k = self.num_points
        return grids.check_params(sources, "source_points", (k, 2), f"(B, {k}, 2)")

    def coefficients(self, sources):
        """The kernel weights `w` `(B, K, 2)` and the affine part `a` `(B, 3, 2)` (rows for `(1, x,
        y)`) of a batch of sources `(B, K, 2)`, in their dtype."""
        sources = self._check_sources(sources)
        coeffs = self._solve(sources, coordinates.compute_dtype_name(sources.dtype))  # Bx(K+3)x2
        coeffs = ops.cast(coeffs, sources.dtype)
        return coeffs[:, : self.num_points], coeffs[:, self.num_points :]

    def _solve(self, sources, dtype):
        solver = ops.convert_to_tensor(self._solver, dtype)  # (K+3)xK
        flat = ops.transpose(ops.cast(sources, dtype), [0, 2, 1])  # Bx2xK
        return grids.transform_points(solver, flat)  # Bx(K+3)x2

    def grid(self, sources, size, align_corners=False):
        """The sampling grid `(B, H_out, W_out, 2)` of a batch of sources `(B, K, 2)`, in their
        dtype (arithmetic in at least float32); `size` may be dynamic."""
        sources = self._check_sources(sources)
        dtype = coordinates.compute_dtype_name(sources.dtype)
        base = grids.output_positions(size, align_corners, dtype)  # HxWx3
        points = ops.reshape(base[..., :2], [-1, 2])  # (H*W)x2
        control = ops.convert_to_tensor(self.points, dtype)  # Kx2
        squared = ops.sum(ops.square(points[:, None, :] - control[None]), axis=-1)
        basis = ops.concatenate(
            [_kernel(squared), ops.ones_like(points[:, :1]), points], axis=-1
        )  # (H*W)x(K+3), columns matching [w; a]
        coeffs = ops.transpose(self._solve(sources, dtype), [0, 2, 1])  # Bx2x(K+3)
        grid = grids.transform_points(basis, coeffs)  # Bx(H*W)x2
        return ops.cast(_grid_shape(grid, sources, base), sources.dtype)  # BxHxWx2


class ThinPlateSpline(PointSpline):
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
        axis = np.linspace(-1.0, 1.0, self.control_points)
        y, x = np.meshgrid(axis, axis, indexing="ij")  # KxK each
        self.source_points = np.stack([x, y], axis=-1)  # KxKx2, float64
        super().__init__(self.source_points.reshape(-1, 2))

    def _check_targets(self, targets):
        k = self.control_points
        targets = grids.check_params(targets, "targets", (k, k, 2), f"(B, {k}, {k}, 2)")
        return ops.reshape(targets, [-1, self.num_points, 2])

    def coefficients(self, targets):
        """The spline's coefficients for targets `(B, K, K, 2)`: the kernel weights `w`,
        `(B, N, 2)`, and the affine part `a`, `(B, 3, 2)` with rows for `(1, x, y)`, in `targets`'
        dtype. An affine motion of the control points gives zero kernel weights.

        Raises:
            ValueError: if `targets` is not `(B, K, K, 2)` or not floating.
        """
        return super().coefficients(self._check_targets(targets))

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
        return super().grid(self._check_targets(targets), size, align_corners)


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
    targets = as_tensor(targets)
    shape = static_shape(targets)
    k = shape[1] if shape is not None and len(shape) == 4 else None
    if k is None or k < 2 or shape[2:] != (k, 2):
        raise ValueError(
            "Argument `targets` must have shape (B, K, K, 2) with a static K >= 2. "
            f"Received: targets.shape={shape_text(targets)}"
        )
    return thin_plate_spline(k).grid(targets, size, align_corners=align_corners)


def point_spline(points, regularization=0.0, name="control_points"):
    """The `PointSpline` of constant `(K, 2)` points, built once per layout (cached).

    Raises:
        ValueError: see `PointSpline`.
    """
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1:] != (2,):
        raise ValueError(
            f"Argument `{name}` must have shape (K, 2). Received: {name}.shape={array.shape}"
        )
    key = tuple(map(tuple, array.tolist()))
    return _cached_point_spline(key, _check_regularization(regularization), name)


@functools.lru_cache(maxsize=32)
def _cached_point_spline(points, regularization, name):
    return PointSpline(np.array(points), regularization, name=name)


def _grid_shape(grid, sources, base):
    """The flat grid `(B, P, 2)` of the positions `base` `(H, W, 3)` as `(B, H, W, 2)`."""
    shape = [coordinates.dim(sources, 0), coordinates.dim(base, 0), coordinates.dim(base, 1), 2]
    return ops.reshape(grid, shape)


def _constant_points(points):
    """`points` as a float64 numpy `(K, 2)` array when they are a constant, else `None`."""
    if isinstance(points, tf.Tensor | tf.Variable):
        if not tf.executing_eagerly() or points.shape.rank != 2:
            return None
        points = points.numpy()
    elif keras.ops.is_tensor(
        points
    ):  # JAX or PyTorch: a tensor is solved as one (it may be traced)
        return None
    array = np.asarray(points, dtype=np.float64)
    return array if array.ndim == 2 else None


def _solve_in_graph(sources, targets, regularization, dtype):
    """The coefficients `(B, K + 3, 2)` of splines whose control points are a tensor `(B, K, 2)`."""
    k = targets.shape[1]
    squared = ops.sum(ops.square(targets[:, :, None] - targets[:, None]), axis=-1)  # BxKxK
    kernel = _kernel(squared) + 2.0 * regularization * ops.eye(k, dtype=dtype)
    affine = ops.concatenate([ops.ones_like(targets[..., :1]), targets], axis=-1)  # BxKx3
    top = ops.concatenate([kernel, affine], axis=-1)  # BxKx(K+3)
    corner = ops.zeros_like(affine[:, :3, :3])  # Bx3x3
    bottom = ops.concatenate([ops.transpose(affine, [0, 2, 1]), corner], axis=-1)  # Bx3x(K+3)
    system = ops.concatenate([top, bottom], axis=1)  # Bx(K+3)x(K+3)
    rhs = ops.concatenate([sources, ops.zeros_like(sources[:, :3])], axis=1)  # Bx(K+3)x2
    return ops.solve(system, rhs)


def _grid_in_graph(sources, targets, size, regularization, align_corners):
    """`tps_grid_from_points` for control points given as a tensor: solved per call, in the graph."""
    dtype = coordinates.compute_dtype_name(sources.dtype, targets.dtype)
    sources, targets = ops.cast(sources, dtype), ops.cast(targets, dtype)
    if len(targets.shape) == 2:
        targets = ops.broadcast_to(targets[None], ops.shape(sources))
    coeffs = _solve_in_graph(sources, targets, regularization, dtype)  # Bx(K+3)x2
    base = grids.output_positions(size, align_corners, dtype)  # HxWx3
    points = ops.reshape(base[..., :2], [-1, 2])  # Px2
    squared = ops.sum(ops.square(points[None, :, None] - targets[:, None]), axis=-1)  # BxPxK
    ones = ops.ones_like(squared[..., :1])
    basis = ops.concatenate([_kernel(squared), ones, ones * points[None]], axis=-1)  # BxPx(K+3)
    # A broadcast sum, not a matmul: TF32 on recent GPUs would move the points (`grids`).
    grid = ops.sum(basis[..., None] * coeffs[:, None], axis=-2)  # BxPx2
    return _grid_shape(grid, sources, base)


def tps_grid_from_points(
    source_points, target_points, size, regularization=0.0, align_corners=False
):
    """Sampling grid of the thin-plate spline that maps control points onto where they land.

    ASTER's and clovaai's text rectifiers in one call: `target_points` are the control points in the
    output's normalised coordinates (for them, `fiducial_points()`: 10 along the top of the strip,
    10 along the bottom), `source_points` where the network says each lands in the input. Output
    position `target_points[k]` samples the input at `source_points[b, k]` exactly (with
    `regularization=0`); positions in between follow the spline `f(p) = a_0 + a_x x + a_y y +
    sum_k w_k U(|p - t_k|)` (module docstring), as SciPy's
    `RBFInterpolator(target_points, source_points, kernel="thin_plate_spline", smoothing=lambda)`.

    Args:
        source_points: float tensor `(B, K, 2)`, `(x, y)` normalised input positions.
        target_points: `(K, 2)` positions shared by the batch (numpy, a list, or an eager or
            symbolic tensor), or a tensor `(B, K, 2)`; K >= 3, not all on one line. Constant
            points are checked and their system inverted once (float64, cached); a tensor is
            solved in the graph on every call (`keras.ops.solve`, differentiable w.r.t. both).
        size: `(H_out, W_out)`, Python ints or scalar integer tensors (may be dynamic).
        regularization: lambda >= 0 on the kernel's diagonal, in SciPy's `smoothing` units: 0
            passes through every point, more gives a smoother least-squares spline. Defaults to
            `0.0`.
        align_corners: see `stn_keras.ops.coordinates`. Defaults to `False`. The control points
            stay at their normalised positions either way.

    Returns:
        The grid, `(B, H_out, W_out, 2)` with last axis `(x, y)`, in `source_points`' dtype. The
        arithmetic runs in at least float32, also under mixed precision.

    Raises:
        ValueError: if the shapes do not fit `(B, K, 2)` and `(K, 2)` / `(B, K, 2)`, K < 3,
            constant target points are collinear or (with `regularization=0`) repeated, or
            `regularization` is negative or not finite.

    Example:
        >>> targets = fiducial_points()  # (20, 2): ASTER's layout
        >>> sources = tf.constant(targets[None] * 0.9, tf.float32)  # a zoom-in
        >>> tps_grid_from_points(sources, targets, (32, 100)).shape
        TensorShape([1, 32, 100, 2])
    """
    regularization = _check_regularization(regularization)
    constant = _constant_points(target_points)
    if constant is not None:
        spline = point_spline(constant, regularization, name="target_points")
        return spline.grid(source_points, size, align_corners)
    targets = as_tensor(target_points)
    if len(targets.shape) == 2:  # (K, 2) shared by the batch, known only when the graph runs
        targets = grids.check_params(targets, "target_points", (2,), "(K, 2) or (B, K, 2)")
        k = targets.shape[0]
    else:
        targets = grids.check_params(targets, "target_points", (None, 2), "(K, 2) or (B, K, 2)")
        k = targets.shape[1]
    sources = grids.check_params(source_points, "source_points", (k, 2), f"(B, {k}, 2)")
    if k is not None and k < 3:
        raise ValueError(f"Argument `target_points` must hold at least 3 points. Received: {k}")
    out = _grid_in_graph(sources, targets, size, regularization, align_corners)
    return ops.cast(out, sources.dtype)


def fiducial_points(count=20, margins=(0.05, 0.05)):
    """ASTER's rectification control points: half along the top of the output, half along the
    bottom, evenly spaced, inset by `margins`.

    ASTER (Shi et al., TPAMI 2018) uses `margins=(0.05, 0.05)` of the output's width and height;
    clovaai's deep-text-recognition-benchmark (its `TPS_SpatialTransformerNetwork`, F=20) puts them
    on the border, `margins=(0, 0)`.

    Args:
        count: the number of points, even and >= 4. Defaults to `20`.
        margins: `(x, y)` insets as fractions of the width and height, in `[0, 0.5)`. Defaults
            to `(0.05, 0.05)`.

    Returns:
        float64 `(count, 2)`, `(x, y)` normalised: the top row left to right, then the bottom row.

    Raises:
        ValueError: for an odd `count` or one below 4, or margins outside `[0, 0.5)`.
    """
    count = check_int("count", count, minimum=4)
    if count % 2:
        raise ValueError(
            f"Argument `count` must be even (half top, half bottom). Received: {count}"
        )
    margin_x, margin_y = (float(m) for m in margins)
    if not (0.0 <= margin_x < 0.5 and 0.0 <= margin_y < 0.5):
        raise ValueError(f"Argument `margins` must lie in [0, 0.5). Received: margins={margins!r}")
    x = np.linspace(margin_x, 1.0 - margin_x, count // 2) * 2.0 - 1.0
    top = np.stack([x, np.full_like(x, 2.0 * margin_y - 1.0)], axis=-1)
    bottom = np.stack([x, np.full_like(x, 1.0 - 2.0 * margin_y)], axis=-1)
    return np.concatenate([top, bottom])
