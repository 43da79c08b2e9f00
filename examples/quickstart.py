"""The README's one command: train a small ST-CNN, save it, export it three ways, prove each export.

    python -m examples.quickstart [--out artifacts/quickstart] [--epochs 6]

Trains an ST-CNN (a `SpatialTransformer` in front of a small classifier) on scikit-learn's bundled
digits, distorted by random rotation, scale and translation on a 42x42 canvas (no download), saves
it as `st_cnn.keras`, reloads that file and exports it to a SavedModel, to ONNX twice (the portable
gather graph and onnxruntime's native `GridSample`, at opset 19) and to LiteRT (builtin ops only).
Every export runs in its own runtime at batch sizes 1 and 5 and is compared with Keras; the script
prints the parity report and also checks that each artifact classifies the held-out digits like
Keras does. It exits non-zero if anything fails. `--out` must be new, empty, or a directory an
earlier quick start created (its files are replaced on every run); `--force` writes into another
non-empty directory, replacing only the quick start's own files. About a minute on 2 CPU cores
(about 96% test accuracy).

On the JAX or PyTorch Keras backend (`KERAS_BACKEND=jax`), the model trains there and the exports
and their checks run in a TensorFlow process that reloads `st_cnn.keras`, as `stn-keras-export`
does; every artifact is still compared with the trained model's own predictions.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

# Quiet TensorFlow's C++ start-up and loader logs so the report stands out; set before TF loads.
if "--verbose" not in sys.argv[1:]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from examples import arguments  # noqa: E402
from examples.distorted_digits import train_quick_st_cnn  # noqa: E402
from examples.outputs import claim_for_command, write_atomically  # noqa: E402
from stn_keras import export  # noqa: E402
from stn_keras.export import runners, savedmodel  # noqa: E402
from stn_keras.export.validation import input_specs  # noqa: E402
from stn_keras.quiet import quiet_third_party  # noqa: E402

# The quick start's artifacts: (name, file in --out, format, the runtime it is checked in).
ARTIFACTS = (
    ("savedmodel", "savedmodel", "savedmodel", "tf.saved_model"),
    ("onnx", "st_cnn.onnx", "onnx", "onnxruntime"),
    ("onnx-native", "st_cnn_gridsample.onnx", "onnx-native", "onnxruntime"),
    ("litert", "st_cnn.tflite", "litert", "litert"),
)


def main(argv=None):
    parser = arguments.Parser(prog="python -m examples.quickstart", description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("artifacts/quickstart"))
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty --out this example did not create",
    )
    parser.add_argument("--epochs", type=arguments.positive_int, default=6)
    parser.add_argument(
        "--train-copies",
        type=arguments.positive_int,
        default=4,
        help="distorted copies per digit",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show TensorFlow's and the converters' own logs"
    )
    # The trained model's held-out digits and predictions, for the TensorFlow process that
    # exports a model trained on another backend.
    parser.add_argument("--held-out", type=pathlib.Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = claim_for_command(parser.prog, args.out, "quickstart", args.force)
    if out is None:
        return 2
    with quiet_third_party(args.verbose):
        if args.held_out is not None:
            with np.load(args.held_out) as held_out:
                return _export_and_check(out, *(held_out[k] for k in ("x", "predicted", "start")))
        return _run(args, out)


def _run(args, out):
    import keras

    start = time.time()
    trained, (x_test, y_test) = train_quick_st_cnn(
        epochs=args.epochs, train_copies=args.train_copies
    )
    keras_predictions = np.argmax(trained.predict(x_test, verbose=0), axis=-1)
    accuracy = float(np.mean(keras_predictions == y_test))
    print(f"trained ST-CNN: test accuracy {100 * accuracy:.1f}% ({time.time() - start:.0f} s)")
    write_atomically(out / "st_cnn.keras", trained.save)
    if keras.backend.backend() == "tensorflow":
        return _export_and_check(out, x_test, keras_predictions, start)
    print(f"exporting under TensorFlow (this process runs Keras on {keras.backend.backend()})")
    return _export_under_tensorflow(args, out, x_test, keras_predictions, start)


def _export_under_tensorflow(args, out, x_test, keras_predictions, start):
    """Run the exports and their checks in a TensorFlow process; return its exit status."""
    sys.stdout.flush()
    with tempfile.TemporaryDirectory() as scratch:
        held_out = pathlib.Path(scratch) / "held_out.npz"
        np.savez(held_out, x=x_test, predicted=keras_predictions, start=start)
        command = [sys.executable, "-m", "examples.quickstart", "--out", str(out)]
        command += ["--held-out", str(held_out)] + (["--verbose"] if args.verbose else [])
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        return subprocess.run(command, env=env, check=False).returncode


def _export_and_check(out, x_test, keras_predictions, start):
    """Export what was saved, as `stn-keras-export` would (the reloaded `.keras` file), validate
    every artifact in its runtime and compare its classes with `keras_predictions`."""
    model = export.load_model(out / "st_cnn.keras")
    reports = [
        export.export(model, out / file, format, force=True) for _, file, format, _ in ARTIFACTS
    ]
    print("\nparity with Keras (random inputs, batch sizes 1 and 5):")
    for report in reports:
        print("  " + report.summary())

    print("\nagreement with Keras on the held-out digits (predicted class):")
    failed = not all(r.passed for r in reports)
    specs, names = input_specs(model), savedmodel.signature_output_names(model)
    for name, file, _, runtime in ARTIFACTS:
        run, _ = runners.RUNNERS[runtime](out / file, specs, names)
        predictions = np.argmax(run([x_test])[0], axis=-1)
        agreement = float(np.mean(predictions == keras_predictions))
        failed |= agreement < 0.99
        print(f"  {name:<11} {100 * agreement:.1f}% of {len(x_test)} digits")
    print(f"\nartifacts in {out}/ ({time.time() - start:.0f} s in all)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
