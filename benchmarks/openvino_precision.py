"""OpenVINO's CPU precision on an exported ONNX graph: its default against `f32`, both against
onnxruntime, on the validators' random inputs.

    python -m benchmarks.openvino_precision artifacts/quickstart/st_cnn_gridsample.onnx

prints the CPU's default `INFERENCE_PRECISION_HINT` (bfloat16 where the CPU has bfloat16 units)
and the largest absolute difference from onnxruntime's outputs at each precision.
"""

import argparse

import numpy as np
import onnxruntime as ort
import openvino

from stn_keras.export.runners import openvino as openvino_runner
from stn_keras.export.runners import session_of


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an ONNX file with float32 inputs")
    parser.add_argument("--batch-size", type=int, default=5)
    args = parser.parse_args(argv)
    session = session_of(args.model)
    rng = np.random.default_rng(0)
    inputs = [
        rng.random([args.batch_size, *i.shape[1:]]).astype("float32") for i in session.get_inputs()
    ]
    names = [i.name for i in session.get_inputs()]
    expected = session.run(None, dict(zip(names, inputs, strict=True)))
    default = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    print(f"onnxruntime {ort.__version__}; OpenVINO {openvino.__version__}, CPU default {default}")
    for precision in dict.fromkeys((default.to_string(), "f32")):  # e.g. "bf16", then "f32"
        run, runtime = openvino_runner(args.model, precision=precision)
        error = max(
            float(np.max(np.abs(a - b))) for a, b in zip(run(inputs), expected, strict=True)
        )
        print(f"  {runtime}: max |OpenVINO - onnxruntime| = {error:.2e}")


if __name__ == "__main__":
    main()
