"""Unsupervised deformable registration (the VoxelMorph recipe) with `IntegrateVelocity` and `Warp`.

A small U-Net looks at a moving and a fixed image and predicts a stationary velocity field;
`IntegrateVelocity` turns it into a displacement field (scaling and squaring) and `Warp` applies it
to the moving image. Training needs no ground-truth deformation: the loss is the image similarity
(MSE) of the warped and the fixed image plus a smoothness penalty on the field. A baseline predicts
the displacement directly (no integration) with the same network, loss and budget.

2-D data needs no download: pairs of scikit-learn's bundled digits of one class, on MNIST's 28x28
frame (`examples.distorted_digits.load_digits_frames`), split into training and held-out pairs.

    python -m examples.register --out runs/register
    python -m examples.register --volume --out runs/register3d

writes `figure.png` (moving, fixed, warped, the deformation drawn as a warped grid, its Jacobian
determinant), `results.json` and `results.md` (similarity before and after registration and the % of
pixels whose Jacobian determinant is not positive, on held-out pairs, for both models) to `--out`.
`--volume` does the same on small synthetic volumes (ellipsoids under smooth random deformations),
then exports the trained model to ONNX with native 5-D `GridSample` and checks it in onnxruntime.
"""

import json
import sys
import time

import keras
import numpy as np
import tensorflow as tf

import stn_keras
from examples import arguments
from examples.outputs import claim_for_command, claim_output, write_atomically, write_text

EXAMPLE = "register"

# ----------------------------------------------------------------------------------------------
# Data


def digit_pairs(count, rng, split="train"):
    """`(moving, fixed)` pairs of digits of one class, `(count, 28, 28, 1)` each, values in [0, 1].

    Training pairs come from the training digits and held-out pairs from the test digits of
    `load_digits_frames`' stratified split.
    """
    from examples.distorted_digits import load_digits_frames

    x_train, y_train, x_test, y_test = load_digits_frames()
    images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
    first = rng.integers(0, len(images), count)
    second = np.array([rng.choice(np.flatnonzero(labels == labels[i])) for i in first])
    return images[first, ..., None], images[second, ..., None]


def _smooth_flows(rng, count, size, amplitude):
    """Random smooth displacement fields `(count, *size, N)` in pixels ("ij"): a coarse random field,
    upsampled."""
    coarse = rng.normal(0.0, amplitude, (count, *(3,) * len(size), len(size)))
    return stn_keras.resize_flow(coarse.astype("float32"), size).numpy() * (3.0 / np.array(size))


def volume_pairs(count, rng, size=(16, 16, 16)):
    """`(moving, fixed)` synthetic volumes `(count, *size, 1)`: a random ellipsoid, and the same one
    under a smooth random deformation of a few voxels."""
    grids = np.meshgrid(*(np.linspace(-1, 1, n) for n in size), indexing="ij")
    centres = rng.uniform(-0.2, 0.2, (count, 3))
    radii = rng.uniform(0.35, 0.6, (count, 3))
    distance = sum(
        ((g[None] - centres[:, k, None, None, None]) / radii[:, k, None, None, None]) ** 2
        for k, g in enumerate(grids)
    )
    moving = (1.0 / (1.0 + np.exp(8.0 * (distance - 1.0))))[..., None].astype("float32")
    flows = _smooth_flows(rng, count, size, amplitude=2.0)
    fixed = stn_keras.warp(moving, flows, padding_mode="border").numpy()
    return moving, fixed


# ----------------------------------------------------------------------------------------------
# Model


def _block(x, filters, conv, strides=1):
    return conv(filters, 3, strides=strides, padding="same", activation="leaky_relu")(x)


def build_model(shape, integrate=True, steps=7, width=16):
    """`[moving, fixed] -> [warped, flow]`: a two-level U-Net predicting a velocity (or, with
    `integrate=False`, a displacement) field, then `IntegrateVelocity` and `Warp`.

    Args:
        shape: `(H, W, 1)` or `(D, H, W, 1)`; every spatial size divisible by 4.
        integrate: whether the network's field is a velocity to integrate. Defaults to `True`.
        steps: scaling-and-squaring steps. Defaults to `7`.
        width: filters of the first level. Defaults to `16`.
    """
    spatial = len(shape) - 1
    conv = keras.layers.Conv2D if spatial == 2 else keras.layers.Conv3D
    up = keras.layers.UpSampling2D if spatial == 2 else keras.layers.UpSampling3D
    moving, fixed = keras.Input(shape, name="moving"), keras.Input(shape, name="fixed")
    x0 = _block(keras.layers.Concatenate()([moving, fixed]), width, conv)
    x1 = _block(x0, 2 * width, conv, strides=2)
    x2 = _block(x1, 2 * width, conv, strides=2)
    y1 = _block(keras.layers.Concatenate()([up(2)(x2), x1]), 2 * width, conv)
    y0 = _block(keras.layers.Concatenate()([up(2)(y1), x0]), width, conv)
    # VoxelMorph's start: a field of nearly zero, so the first warps are nearly the identity.
    field = conv(
        spatial,
        3,
        padding="same",
        kernel_initializer=keras.initializers.RandomNormal(stddev=1e-5, seed=0),
        name="velocity" if integrate else "displacement",
    )(y0)
    flow = stn_keras.IntegrateVelocity(steps, name="integrate")(field) if integrate else field
    warped = stn_keras.Warp(padding_mode="border", name="warp")([moving, flow])
    return keras.Model([moving, fixed], [warped, flow], name="registration")


def smoothness(_, flow):
    """The mean squared finite difference of the field along every spatial axis (VoxelMorph's `Grad`
    with `l2`), per example `(B,)`; the first argument, a dummy target, is ignored.

    Per example rather than one scalar for the batch, as Keras losses are: Keras divides a
    per-example loss's batch mean by the replicas in sync, but passes a scalar through unscaled,
    so a scalar loss would weigh N times more on N replicas.
    """
    spatial = len(flow.shape) - 2
    total = 0.0
    for axis in range(1, spatial + 1):
        n = tf.shape(flow)[axis]
        diff = tf.gather(flow, tf.range(1, n), axis=axis) - tf.gather(
            flow, tf.range(n - 1), axis=axis
        )
        total += tf.reduce_mean(tf.square(diff), axis=list(range(1, spatial + 2)))
    return total / spatial


def compile_model(model, learning_rate=1e-3, weight=0.05):
    """Compile for image similarity (MSE) plus `weight` times the field's smoothness."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=["mse", smoothness],
        loss_weights=[1.0, weight],
        jit_compile=True,
    )
    return model


def train(model, moving, fixed, epochs, batch_size=32, learning_rate=1e-3, weight=0.05, verbose=1):
    """Train on image similarity (MSE) plus `weight` times the field's smoothness."""
    compile_model(model, learning_rate, weight)
    zeros = np.zeros((*moving.shape[:-1], moving.ndim - 2), "float32")
    model.fit(
        [moving, fixed], [fixed, zeros], batch_size=batch_size, epochs=epochs, verbose=verbose
    )
    return model


# ----------------------------------------------------------------------------------------------
# Evaluation and output


def evaluate(model, moving, fixed):
    """Similarity before and after registration and folding, on held-out pairs."""
    warped, flow = model.predict([moving, fixed], batch_size=64, verbose=0)
    determinant = stn_keras.jacobian_determinant(flow).numpy()
    return {
        "mse_before": float(np.mean((moving - fixed) ** 2)),
        "mse_after": float(np.mean((warped - fixed) ** 2)),
        "nonpositive_jacobian_percent": float(100.0 * np.mean(determinant <= 0.0)),
        "mean_displacement_pixels": float(np.mean(np.linalg.norm(flow, axis=-1))),
    }


def format_table(results):
    lines = [
        "| model | MSE before | MSE after | pixels with det(J) <= 0 | mean displacement (px) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['mse_before']:.4f} | {r['mse_after']:.4f} | "
            f"{r['nonpositive_jacobian_percent']:.2f}% | {r['mean_displacement_pixels']:.2f} |"
        )
    return "\n".join(lines)


def save_figure(path, model, moving, fixed, count=4):
    """Moving, fixed, warped, the warped grid and det(J), one row for each of the first `count`
    held-out pairs (fewer when there are fewer; 2-D, or the middle slice of a volume)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(count, len(moving))
    warped, flow = model.predict([moving[:count], fixed[:count]], verbose=0)
    determinant = stn_keras.jacobian_determinant(flow).numpy()
    if moving.ndim == 5:  # the middle slice along D, and the field's (h, w) components there
        middle = moving.shape[1] // 2
        moving, fixed, warped = (a[:count, middle] for a in (moving, fixed, warped))
        flow, determinant = flow[:, middle, ..., 1:], determinant[:, middle]
    titles = ("moving", "fixed", "warped", "deformation", "det(J)")
    fig, axes = plt.subplots(count, 5, figsize=(8.5, 1.8 * count), squeeze=False)
    h, w = moving.shape[1:3]
    rows, cols = np.mgrid[:h, :w]
    for i in range(count):
        for j, image in enumerate((moving[i], fixed[i], warped[i])):
            axes[i, j].imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
        # The grid drawn where each output pixel reads the moving image: p + flow[p].
        ys, xs = rows + flow[i, ..., 0], cols + flow[i, ..., 1]
        ax = axes[i, 3]
        for k in range(0, h, 2):
            ax.plot(xs[k], ys[k], "b-", linewidth=0.5)
        for k in range(0, w, 2):
            ax.plot(xs[:, k], ys[:, k], "b-", linewidth=0.5)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_aspect("equal")
        shown = axes[i, 4].imshow(determinant[i], cmap="RdBu", vmin=0.0, vmax=2.0)
        for j in range(5):
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(titles[j], fontsize=8)
    fig.colorbar(shown, ax=axes[:, 4], shrink=0.6)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def export_and_check(model, path, moving, fixed):
    """Export to ONNX with native `GridSample` and run it in onnxruntime against Keras."""
    import onnxruntime as ort

    from stn_keras.export import export_onnx
    from stn_keras.quiet import quiet_third_party

    with quiet_third_party(verbose=False):  # tf2onnx's deprecation notices
        # `path` lies in an output directory this example owns (`claim_output`).
        report = export_onnx(model, path, native_gridsample=True, force=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    warped, flow = session.run(None, {"moving": moving, "fixed": fixed})
    expected = model.predict([moving, fixed], verbose=0)
    error = max(float(np.max(np.abs(a - b))) for a, b in zip((warped, flow), expected, strict=True))
    return {"report": str(report), "max_abs_error": error, "passed": bool(report.passed)}


def run(
    out,
    volume=False,
    pairs=1000,
    test_pairs=200,
    epochs=10,
    steps=7,
    seed=0,
    verbose=1,
    baseline=True,
    volume_size=16,
    force=False,
):
    """Train the velocity model and the displacement baseline; write the figure and the table.

    Args:
        out: the output directory.
        volume: synthetic volumes instead of digits. Defaults to `False`.
        pairs, test_pairs: training and held-out pairs.
        epochs: training epochs of each model.
        steps: scaling-and-squaring steps.
        seed: seed of the data and the weights.
        verbose: Keras progress bars (1) or silence (0).
        baseline: whether to also train the displacement baseline. Defaults to `True`.
        volume_size: the volumes' side, divisible by 4. Defaults to `16`.
        force: write into a non-empty `out` this example did not create (replacing only its own
            files). Defaults to `False`.

    Returns:
        The results dict also written to `out/results.json`.

    Raises:
        ValueError: if `out` is a file or a non-empty directory this example did not create.
    """
    out = claim_output(out, EXAMPLE, force)
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    if volume:
        size = (volume_size,) * 3
        moving, fixed = volume_pairs(pairs, rng, size)
        test_moving, test_fixed = volume_pairs(test_pairs, rng, size)
    else:
        moving, fixed = digit_pairs(pairs, rng, "train")
        test_moving, test_fixed = digit_pairs(test_pairs, rng, "test")
    shape = moving.shape[1:]
    results, models, start = {}, {}, time.time()
    variants = [("velocity + IntegrateVelocity", True), ("displacement (baseline)", False)]
    for name, integrate in variants if baseline else variants[:1]:
        model = build_model(shape, integrate=integrate, steps=steps)
        if verbose:
            print(f"Training {name} on {len(moving)} pairs of {shape}")
        train(model, moving, fixed, epochs, verbose=verbose)
        results[name] = evaluate(model, test_moving, test_fixed)
        models[name] = model
    summary = {
        "data": "synthetic volumes" if volume else "scikit-learn digits, pairs of one class",
        "shape": list(shape),
        "pairs": pairs,
        "test_pairs": test_pairs,
        "epochs": epochs,
        "steps": steps,
        "seconds": round(time.time() - start, 1),
        "results": results,
    }
    velocity_model = models["velocity + IntegrateVelocity"]
    write_atomically(
        out / "figure.png",
        lambda path: save_figure(path, velocity_model, test_moving, test_fixed),
    )
    if volume:
        summary["onnx"] = export_and_check(  # staged and validated by the exporter
            velocity_model, out / "registration.onnx", test_moving[:2], test_fixed[:2]
        )
    write_text(out / "results.json", json.dumps(summary, indent=1))
    write_text(out / "results.md", format_table(results) + "\n")
    if verbose:
        print(format_table(results))
        if volume:
            print(summary["onnx"]["report"])
    return summary


def main(argv=None):
    positive, nonnegative = arguments.positive_int, arguments.nonnegative_int
    parser = arguments.Parser(
        prog="python -m examples.register", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--volume", action="store_true", help="synthetic 3-D volumes, then ONNX")
    parser.add_argument(
        "--pairs", type=positive, default=None, help="training pairs (default 2-D 1000, 3-D 400)"
    )
    parser.add_argument("--test-pairs", type=positive, default=200, help="held-out pairs")
    parser.add_argument("--epochs", type=positive, default=10)
    parser.add_argument("--steps", type=nonnegative, default=7, help="scaling-and-squaring steps")
    parser.add_argument("--seed", type=nonnegative, default=0)
    parser.add_argument("--out", default="runs/register")
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty --out this example did not create",
    )
    args = parser.parse_args(argv)
    pairs = args.pairs if args.pairs is not None else (400 if args.volume else 1000)
    # The one usage error found after parsing: an output directory this example may not use.
    if claim_for_command(parser.prog, args.out, EXAMPLE, args.force) is None:
        return 2
    run(
        args.out,
        args.volume,
        pairs,
        args.test_pairs,
        args.epochs,
        args.steps,
        args.seed,
        force=args.force,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
