"""What the ops record in a traced graph, so that exporters read facts instead of re-deriving them.

`grid_sample` and `affine_grid` run inside a name scope that spells their options, e.g.
`grid_sample.bilinear.zeros.corners0/` and `affine_grid.corners1/` (TensorFlow appends `_1`, `_2`, ...
to repeated scopes), and in a traced graph they mark their boundary tensors with `Identity` ops named
after their role: `images`, `grid` and `output` for the sampler, `theta` and `grid` for the affine grid.
The ONNX exporter finds each sampler, its mode and, when the grid is affine, its `theta` by these names
alone (`stn_keras.export.onnx_gridsample`). Eagerly nothing is marked: there is no graph to read.
"""

import re

import tensorflow as tf

SAMPLER = "grid_sample"
AFFINE_GRID = "affine_grid"

_SCOPE = re.compile(
    r"(?:^|/)(?P<kind>grid_sample|affine_grid)(?P<options>(?:\.[a-z]+)*)\.corners(?P<corners>[01])"
    r"(?:_\d+)?/"
)


def sampler_scope(interpolation, padding_mode, align_corners):
    """The name scope of a `grid_sample` call with these (already validated) options."""
    return f"{SAMPLER}.{interpolation}.{padding_mode}.corners{int(align_corners)}"


def affine_grid_scope(align_corners):
    """The name scope of an `affine_grid` call with this (already validated) `align_corners`."""
    return f"{AFFINE_GRID}.corners{int(align_corners)}"


def mark(tensor, role):
    """`tensor`, marked in a traced graph by an `Identity` named `role` (unchanged when eager)."""
    if tf.executing_eagerly():
        return tensor
    return tf.identity(tensor, name=role)


def parse_scope(name):
    """The recorded op whose scope holds the op or tensor `name`, innermost first.

    Args:
        name: a TensorFlow op or tensor name, e.g. `model/warp/grid_sample.nearest.border.corners1/output`.

    Returns:
        `None`, or a dict with `kind` (`"grid_sample"` or `"affine_grid"`), `prefix` (the name up to and
        including the scope's `/`) and the options: `interpolation`, `padding_mode` and
        `align_corners` for a sampler, `align_corners` for an affine grid.
    """
    matches = list(_SCOPE.finditer(name))
    if not matches:
        return None
    match = matches[-1]
    record = {
        "kind": match.group("kind"),
        "prefix": name[: match.end()],
        "align_corners": match.group("corners") == "1",
    }
    options = match.group("options").split(".")[1:]
    if record["kind"] == SAMPLER:
        if len(options) != 2:
            return None
        record["interpolation"], record["padding_mode"] = options
    elif options:
        return None
    return record
