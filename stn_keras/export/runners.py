"""Every runtime an artifact is run in, behind one interface.

A runner loads an artifact and returns `(run, runtime)`: `run` maps a list of input arrays (in the
model's input order) to the artifact's outputs in the model's flattened output order, and `runtime`
names the runtime and its version for the parity report. The exporters validate with these, the
quick start checks its artifacts with them, and the tests use them; `RUNNERS` maps each runtime's
name to its loader, `runner(path, specs, output_names)`.
"""

import warnings

import numpy as np

SERVING_SIGNATURE = "serving_default"


def session_of(model_or_path):
    """An onnxruntime CPU session of an ONNX model (a `ModelProto` or a path)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model_or_path
    if isinstance(model_or_path, onnx.ModelProto):
        source = model_or_path.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _output_index(name):
    """The position of an ONNX graph output named `output_<i>` in the model's outputs."""
    return int(name.rsplit("_", 1)[-1])


def session_runner(session):
    """`(inputs: list of arrays) -> list of arrays` running an onnxruntime session."""
    names = [i.name for i in session.get_inputs()]
    outputs = sorted((o.name for o in session.get_outputs()), key=_output_index)

    def run(inputs):
        return session.run(outputs, dict(zip(names, (np.asarray(x) for x in inputs), strict=True)))

    return run


def onnxruntime(path, specs=None, output_names=None):
    """Run the ONNX file `path` in onnxruntime's CPU provider. Returns `(run, runtime)`."""
    import onnxruntime as ort

    return session_runner(session_of(str(path))), f"onnxruntime {ort.__version__}"


def openvino(path, specs=None, output_names=None, precision="f32"):
    """Run the ONNX file `path` in OpenVINO on CPU. Returns `(run, runtime)`.

    OpenVINO's default precision on CPUs with bfloat16 units (AMX, AVX512-BF16) is bfloat16 (0.18-0.25
    from onnxruntime on the quick start's logits: `benchmarks/openvino_precision.py`);
    `precision="f32"` (`INFERENCE_PRECISION_HINT`) computes in float32, as the artifact does
    elsewhere.

    Raises:
        ValueError: if OpenVINO is not installed.
    """
    try:
        import openvino as ov
    except ImportError:
        raise ValueError(
            "The openvino target is validated in OpenVINO, which is not installed: "
            "pip install 'stn-keras[openvino]'."
        ) from None

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": precision}
    )
    outputs = sorted(compiled.outputs, key=lambda o: _output_index(o.get_any_name()))

    def run(inputs):
        results = compiled([np.asarray(x) for x in inputs])
        return [results[o] for o in outputs]

    return run, f"OpenVINO {ov.__version__.split('-')[0]} CPU, {precision}"


def signature_runner(fn, specs, output_names, keep_alive=None):
    """Wrap a signature function as `(inputs: list of arrays) -> outputs in the model's order`.

    Args:
        fn: a callable taking the inputs as keyword arguments and returning a dict of outputs.
        specs: the model's `validation.input_specs`.
        output_names: the signature's output names in the model's flattened output order (see
            `savedmodel.signature_output_names`); outputs are paired by these names, never by
            position.
        keep_alive: an object to keep referenced while the runner lives (the loaded SavedModel).

    Raises:
        ValueError: (when run) if the signature's outputs are not named `output_names`.
    """
    names = [name for name, _, _ in specs]

    def run(inputs):
        outputs = fn(**dict(zip(names, inputs, strict=True)))
        if set(outputs) != set(output_names):
            raise ValueError(
                f"The artifact's outputs are named {sorted(outputs)}; the model's are "
                f"{sorted(output_names)}."
            )
        return [getattr(outputs[k], "numpy", lambda k=k: outputs[k])() for k in output_names]

    run.keep_alive = keep_alive
    return run


def savedmodel(path, specs, output_names):
    """Run the SavedModel directory `path`'s `serving_default` signature. Returns `(run, runtime)`."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    run = signature_runner(
        loaded.signatures[SERVING_SIGNATURE], specs, output_names, keep_alive=loaded
    )
    return run, f"tf.saved_model {tf.__version__}"


def litert_interpreter(path):
    """A LiteRT interpreter for `path`: `ai_edge_litert`'s when installed, else `tf.lite`'s.

    Returns:
        `(interpreter, runtime name)`.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(model_path=str(path)), "ai_edge_litert"
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            return tf.lite.Interpreter(model_path=str(path)), f"tf.lite {tf.__version__}"


def litert(path, specs, output_names):
    """Run the LiteRT flatbuffer `path`'s `serving_default` signature. Returns `(run, runtime)`.

    The signature runner resizes the inputs to each call's batch size before running.
    """
    interpreter, name = litert_interpreter(path)
    runner = interpreter.get_signature_runner(SERVING_SIGNATURE)
    return signature_runner(runner, specs, output_names), name


RUNNERS = {
    "onnxruntime": onnxruntime,
    "openvino": openvino,
    "tf.saved_model": savedmodel,
    "litert": litert,
}
