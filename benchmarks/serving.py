"""Serving latency: each artifact of a model in each runtime on this machine, side by side.

    python -m benchmarks.serving [--rounds 7] [--out benchmarks/results/cpu-serving]

For the quick start's ST-CNN (42x42 digits) and the registration model (two 28x28 images in, the
warped image and the field out), at batch sizes 1 and 32: the Keras model called under XLA, the
SavedModel's `serving_default` (what TF Serving runs), onnxruntime on the gather graph (opset 18)
and on the native graph (GridSample at opset 19, the default, and at opset 20, with AffineGrid),
OpenVINO on CPU at f32, LiteRT, and onnxruntime-node and onnxruntime-web (WebAssembly, one thread)
under Node 20. The Python contenders are timed interleaved in one process
(`benchmarks.timing.time_interleaved`); the Node ones in their own process right after, median of
`--rounds * 10` calls. Ratios are to onnxruntime's native opset-19 graph. The weights are untrained
(latency does not depend on them); every artifact is validated against Keras when exported.
"""

import argparse
import json
import os
import pathlib
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.run import provenance  # noqa: E402
from benchmarks.timing import time_interleaved  # noqa: E402
from examples import distorted_digits, register  # noqa: E402
from stn_keras.export import export, runners  # noqa: E402
from stn_keras.export.savedmodel import signature_output_names  # noqa: E402
from stn_keras.export.validation import input_specs, sample_inputs  # noqa: E402
from stn_keras.quiet import quiet_third_party  # noqa: E402
from tests.export import node_runtime  # noqa: E402

BATCH_SIZES = (1, 32)
BASELINE = "onnxruntime native 19"
# (contender, file, format, export options, runner)
ARTIFACTS = (
    ("tf.saved_model", "savedmodel", "savedmodel", {}, "tf.saved_model"),
    ("onnxruntime gather 18", "gather.onnx", "onnx", {}, "onnxruntime"),
    (BASELINE, "native19.onnx", "onnx-native", {}, "onnxruntime"),
    ("onnxruntime native 20", "native20.onnx", "onnx-native", {"opset": 20}, "onnxruntime"),
    ("OpenVINO f32 native 19", "native19.onnx", None, {}, "openvino"),
    ("LiteRT", "model.tflite", "litert", {}, "litert"),
)
NODE = (("onnxruntime-node native 19", "node"), ("onnxruntime-web wasm native 19", "web"))


def _models():
    keras.utils.set_random_seed(0)
    return {
        "ST-CNN 42x42": distorted_digits.build_st_cnn(42),
        "registration 28x28": register.build_model((28, 28, 1)),
    }


def _python_contenders(model, folder, inputs):
    """`{name: zero-argument callable}` for every artifact run from Python, and Keras under XLA."""
    specs, names = input_specs(model), signature_output_names(model)
    xla = tf.function(lambda *x: model(list(x) if len(x) > 1 else x[0]), jit_compile=True)
    contenders = {"Keras XLA call": lambda: [t.numpy() for t in keras.tree.flatten(xla(*inputs))]}
    for name, file, _, _, runtime in ARTIFACTS:
        run, _ = runners.RUNNERS[runtime](folder / file, specs, names)
        contenders[name] = lambda run=run: run(inputs)
    return contenders


def _export_all(model, folder):
    for _, file, format, options, _ in ARTIFACTS:
        if format is not None:
            export(model, folder / file, format, **options)


def _node_times(model, folder, inputs, repeat):
    cases = [list(zip([n for n, _, _ in input_specs(model)], inputs, strict=True))]
    times = {}
    for name, runtime in NODE:
        _, (median,) = node_runtime.median_ms(folder / "native19.onnx", runtime, cases, repeat)
        times[name] = {"median_ms": median, "samples": repeat}
    return times


def measure(rounds):
    results = {}
    for model_name, model in _models().items():
        with tempfile.TemporaryDirectory(prefix="stn_keras_serving_") as scratch:
            folder = pathlib.Path(scratch)
            with quiet_third_party(False):
                _export_all(model, folder)
            for batch in BATCH_SIZES:
                inputs = sample_inputs(input_specs(model), batch)
                times = time_interleaved(_python_contenders(model, folder, inputs), rounds=rounds)
                times.update(_node_times(model, folder, inputs, rounds * 10))
                results[f"{model_name}, batch {batch}"] = times
    return results


def markdown(results, command):
    names = list(next(iter(results.values())))
    lines = [
        f"`{command}` {provenance()}: median ms (ratio to {BASELINE}).",
        "",
        "| runtime | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for name in names:
        cells = []
        for times in results.values():
            entry, base = times.get(name, {}), times[BASELINE]["median_ms"]
            if "median_ms" not in entry:
                cells.append(entry.get("error", "n/a")[:40])
            else:
                cells.append(f"{entry['median_ms']:.2f} ({entry['median_ms'] / base:.2f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    node_runtime.check_installed()
    results = measure(args.rounds)
    command = "python -m benchmarks.serving" + (
        f" --rounds {args.rounds}" if args.rounds != 7 else ""
    )
    table = markdown(results, command)
    print(table)
    if args.out is not None:
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
        args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
