"""The sampler's backward pass, written out: the image gradient scatters the output gradient
times each tap's weight back to the tap's row; the coordinates' gradient dots the output gradient
with each tap's values times its weight's slope along the coordinate's axis and the other axes'
weights. These are autodiff's own numbers in PyTorch's conventions (a tap outside the image has
weight and slope 0; nearest interpolation has a zero coordinate gradient), shaped around what makes
XLA's CPU loops slow: no select on the whole gradient, no stack of the coordinates' gradients
(`_combine`), no reduction over a few channels, no gathered tensor shared by two loops. Few- and
many-channel images take different layouts of the same sums (`FEW_CHANNELS`); the measurements
behind each choice are in `benchmarks/README.md` ("The sampler's layouts").
"""

import math

import tensorflow as tf

from stn_keras.ops import coordinates
from stn_keras.ops.sampling.taps import flat_indices, product, select

# The backward pass takes one of two layouts, by the (static) number of channels; both give the
# same numbers. Up to this many channels it works per tap: one scatter-add per tap, and the
# coordinates' gradient as one elementwise loop that sums over the channels one gathered channel at
# a time (a reduction inside the loop is several times slower). With more channels it stacks all
# taps on one axis: one scatter, and one gather whose dot product over the channels is a long
# reduction, which XLA runs well.
FEW_CHANNELS = 4


def gradients(upstream, images, pixels, flat, table, constant_weights):
    """`(d images, d pixels)` of the sampler's output gradient `upstream` `(B, *out, C)`.

    Args:
        upstream: the output gradient, in the compute dtype.
        images: `(B, *in, C)`; `flat`: the same as a `(B * prod(in), C)` matrix.
        pixels: `(B, *out, N)`, the coordinates the forward pass read.
        table: the forward pass's `taps.TapTable`.
        constant_weights: whether every slope is 0 (nearest interpolation).
    """
    channels = coordinates.dim(images, -1)
    scattered = _scatter_width(channels, table.in_size, pixels.shape[1:-1])
    few = isinstance(channels, int) and channels <= FEW_CHANNELS
    stacked = None
    if few:
        d_flat = _image_gradient_per_tap(upstream, flat, table, scattered, pixels.dtype)
    else:
        # All taps at once: one scatter, and one gather apart from the forward pass's.
        stacked = _StackedTaps(
            table.batch, table.in_size, table.indices, table.weights, table.slopes,
            tf.concat(table.valid, -1),
        )  # fmt: skip
        d_flat = _image_gradient_stacked(upstream, flat, stacked, scattered)
    if scattered != channels:
        d_flat = d_flat[:, :channels]
    d_images = tf.reshape(tf.cast(d_flat, images.dtype), tf.shape(images))
    if constant_weights:  # nearest: the output is piecewise constant in the coordinates
        return d_images, tf.zeros_like(pixels)
    if few:
        slopes = _slopes_of_taps(table)
        return d_images, _pixel_gradient_unrolled(images, table.rows, table.valid, slopes, upstream)
    return d_images, _pixel_gradient_stacked(flat, upstream, stacked)


def _image_gradient_per_tap(upstream, flat, table, scattered, dtype):
    """The image gradient as `(B * prod(in), scattered)`: one scatter-add per tap.

    Each scatter's updates are padded in their own loop: one padded copy of `upstream` shared by
    all of them makes XLA run the whole backward pass in sequence on one thread.
    """
    d_flat = tf.zeros(tf.stack([tf.shape(flat)[0], scattered]), dtype=dtype)
    for rows, valid, weight in zip(table.rows, table.valid, table.weights_of_taps, strict=True):
        updates = select(valid, upstream * tf.expand_dims(weight, -1))
        d_flat = tf.tensor_scatter_nd_add(
            d_flat, rows[..., None], _pad_channels(updates, scattered)
        )
    return d_flat


def _image_gradient_stacked(upstream, flat, stacked, scattered):
    """The image gradient as `(B * prod(in), scattered)`: one scatter of every tap."""
    updates = select(
        stacked.valid[..., None],
        tf.expand_dims(upstream, -2) * tf.expand_dims(stacked.weights, -1),
    )
    updates = _pad_channels(updates, scattered)  # B x out x taps x (scattered)
    return tf.math.unsorted_segment_sum(
        tf.reshape(updates, [-1, scattered]),  # (B*out*taps)x(scattered)
        tf.reshape(stacked.rows, [-1]),
        tf.shape(flat, tf.int64)[0],
    )


def _slopes_of_taps(table):
    """Each tap's `(d weight / dx, d weight / dy[, d weight / dz])`: the slope along the
    component's axis times the weights along the others."""
    spatial = len(table.in_size)

    def along(component, tap):
        axis = spatial - 1 - component  # the array axis of grid component `component`
        factors = [
            (table.slopes if a == axis else table.weights)[a][tap[a]] for a in range(spatial)
        ]
        return product(factors)

    return [[along(component, tap) for component in range(spatial)] for tap in table.taps]


def _scatter_width(channels, in_size, out_size):
    """How many channels the image-gradient scatter writes per row: `channels`, or one more.

    XLA's CPU scatter-add is several times slower on rows of 3 floats than of 4 when successive
    updates land on the same or adjacent rows, as they do when the output samples the input at least
    as densely. Padding costs a slice of the whole image gradient, which does not pay when the
    output is smaller than the input, so only odd channel counts above 1 are padded, and only when
    the output has at least as many pixels (measurements: `benchmarks/README.md`, "The sampler's
    layouts").

    Args:
        channels: the number of channels, an int or `None` when only known at run time.
        in_size, out_size: the input's and the output's spatial sizes, `(H, W)` or `(D, H, W)`,
            ints or `None`.

    Returns:
        `channels + 1` or `channels`.
    """
    sizes = (channels, *in_size, *out_size)
    if not all(isinstance(d, int) for d in sizes):
        return channels
    if channels > 1 and channels % 2 and math.prod(out_size) >= math.prod(in_size):
        return channels + 1
    return channels


def _pad_channels(tensor, channels):
    """`tensor` `(..., C)` zero-padded on its last axis to `channels` (no copy when equal)."""
    extra = channels - tensor.shape[-1] if isinstance(channels, int) else 0
    if not extra:
        return tensor
    return tf.pad(tensor, [[0, 0]] * (tensor.shape.rank - 1) + [[0, extra]])


def _combine(components):
    """`tf.stack(components, axis=-1)` by scaling unit vectors: a stack compiles to branches in XLA's
    loops, which then stop being vectorised."""
    units = tf.unstack(tf.eye(len(components), dtype=components[0].dtype))
    return tf.add_n(
        [tf.expand_dims(c, -1) * unit for c, unit in zip(components, units, strict=True)]
    )


def _pixel_gradient_unrolled(images, rows, valid, slopes, upstream):
    """The gradient w.r.t. the pixel coordinates for a few channels (static `C`), as one loop.

    Per tap, the image values are gathered one channel at a time from the flat image, with the row
    broadcast along a last axis of N (one entry per coordinate), so that `d/dx`, `d/dy` (and `d/dz`)
    each get their own gather. The whole gradient is then a single elementwise loop: no reduction
    over the channels and no gathered tensor shared by two loops, which XLA would write out to memory
    first. LLVM still leaves that loop scalar (its cost model finds vectorising a dozen gathers per
    pixel not worth it).

    Args:
        images: `(B, *in, C)`.
        rows: list of int64 `(B, *out)`, each tap's row in the `(B * prod(in), C)` matrix.
        valid: list of bool `(B, *out, 1)`, whether each tap is read.
        slopes: list of N-lists of `(B, *out)`: each tap's `(d weight / dx, d weight / dy[, .. dz])`.
        upstream: `(B, *out, C)`, the output gradient in the compute dtype.

    Returns:
        `(B, *out, N)`: `sum_tap sum_c upstream[c] * value[tap, c] * slopes[tap]`.
    """
    channels = images.shape[-1]
    values = tf.reshape(images, [-1])  # B*prod(in)*C
    spread = tf.zeros([len(slopes[0])], tf.int64)  # one entry per coordinate
    terms = []
    for row, read, tap_slopes in zip(rows, valid, slopes, strict=True):
        first = tf.expand_dims(row * channels, -1) + spread  # B x out x N, the tap's first channel
        dot = tf.add_n(
            [
                tf.cast(tf.gather(values, first + c), upstream.dtype)
                * tf.expand_dims(upstream[..., c], -1)
                for c in range(channels)
            ]
        )  # B x out x N, all entries equal
        terms.append(select(read, dot) * _combine(tap_slopes))
    return tf.add_n(terms)


class _StackedTaps:
    """Every tap of every output pixel at once, on a last axis of all taps, the last array axis fastest.

    Built as outer products of the per-axis stacks, so XLA computes each axis's tap arithmetic once
    per pixel rather than once per tap.

    Attributes:
        rows: int64 `(B, *out, taps)`, each tap's row in the `(B * prod(in), C)` image matrix.
        weights: `(B, *out, taps)`, each tap's weight.
        slopes: N tensors `(B, *out, taps)`, its derivatives w.r.t. the coordinates `(x, y[, z])`.
        valid: bool `(B, *out, taps)`, whether each tap is read.
    """

    def __init__(self, batch, in_size, indices, weights, slopes, valid):
        """
        Args:
            batch: int64 `(B, 1, ..., 1)`, the batch indices.
            in_size: the input's spatial sizes in array order, `(H, W)` or `(D, H, W)`.
            indices, weights, slopes: per array axis, lists of T tensors `(B, *out)`.
            valid: bool `(B, *out, taps)`, whether each tap is read, in the same tap order.
        """
        self.valid = valid
        spatial = len(in_size)

        def spread(values, axis):  # T x (B x out) -> B x out x 1..T..1, T at position `axis`
            expand = (None,) * axis + (slice(None),) + (None,) * (spatial - 1 - axis)
            return tf.stack(values, axis=-1)[(..., *expand)]

        taps = math.prod(len(i) for i in indices)
        out_shape = tf.shape(indices[0][0])
        shape = tf.concat([out_shape, [taps]], axis=0)

        def outer(factors):
            return tf.reshape(product(factors), shape)  # B x out x taps

        index, weight, slope = (
            [spread(v[a], a) for a in range(spatial)] for v in (indices, weights, slopes)
        )
        extra = (None,) * spatial
        self.rows = tf.reshape(flat_indices(batch[(..., *extra)], index, in_size), shape)
        self.weights = outer(weight)
        self.slopes = [
            outer([slope[a] if a == spatial - 1 - component else weight[a] for a in range(spatial)])
            for component in range(spatial)
        ]


def _pixel_gradient_stacked(flat, upstream, stacked):
    """The gradient w.r.t. the pixel coordinates for many channels: one gather of all taps.

    The gather differs from the forward pass's per-tap gathers, so XLA keeps them apart (merged, it
    would write every tap's values out to memory), and the dot product over the channels is a
    reduction over a long axis, which XLA runs well.

    Args:
        flat: the images as a `(B * prod(in), C)` matrix.
        upstream: `(B, *out, C)`, the output gradient in the compute dtype.
        stacked: the `_StackedTaps`.

    Returns:
        `(B, *out, N)`.
    """
    values = tf.cast(tf.gather(flat, stacked.rows), upstream.dtype)  # B x out x taps x C
    values = select(stacked.valid[..., None], values)
    dots = tf.reduce_sum(values * tf.expand_dims(upstream, -2), axis=-1)  # B x out x taps
    return _combine([tf.reduce_sum(dots * slopes, axis=-1) for slopes in stacked.slopes])
