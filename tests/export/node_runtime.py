"""Run exported ONNX models in onnxruntime-node and onnxruntime-web (WebAssembly) under Node 20.

The runtimes are npm packages pinned by `tests/node/package-lock.json`, installed by the README's
test command (`npm ci --prefix tests/node`); `tests/node/run.mjs` runs a model on inputs passed as
float32 files. `runner` gives the `(inputs) -> outputs` callable that
`stn_keras.export.validation.check_parity` takes, so an artifact is compared with Keras exactly as
the exporters compare it in onnxruntime's Python binding.
"""

import json
import pathlib
import subprocess
import tempfile

import numpy as np

NODE_DIR = pathlib.Path(__file__).resolve().parents[1] / "node"
RUNTIMES = ("node", "web")


def check_installed():
    """Raise with the install command unless the npm packages are there."""
    for runtime in RUNTIMES:
        if not (NODE_DIR / "node_modules" / f"onnxruntime-{runtime}" / "package.json").exists():
            raise RuntimeError(
                f"onnxruntime-{runtime} is not installed: run `npm ci --prefix tests/node` "
                "(the README's test command does)"
            )


def run_cases(path, runtime, cases, timeout=300):
    """Run the ONNX model `path` on each case (a list of `(name, float32 array)`) in one Node
    process; returns `(runtime name, [outputs of each case, in output_0, output_1... order])`."""
    reply, results = _run(path, runtime, cases, timeout=timeout)
    return reply["runtime"], results


def median_ms(path, runtime, cases, repeat, timeout=600):
    """Time each case `repeat` times in one Node process (after 2 untimed runs); returns
    `(runtime name, [median milliseconds of each case])`."""
    reply, _ = _run(path, runtime, cases, repeat=repeat, timeout=timeout)
    return reply["runtime"], reply["median_ms"]


def _run(path, runtime, cases, repeat=0, timeout=300):
    with tempfile.TemporaryDirectory(prefix="stn_keras_node_") as scratch:
        scratch = pathlib.Path(scratch)
        request = {"model": str(path), "runtime": runtime, "cases": [], "repeat": repeat}
        for index, inputs in enumerate(cases):
            entries = []
            for name, array in inputs:
                file = scratch / f"input.{index}.{name}.bin"
                np.ascontiguousarray(array, dtype="<f4").tofile(file)
                entries.append({"name": name, "shape": list(array.shape), "file": str(file)})
            request["cases"].append(entries)
        request_path = scratch / "request.json"
        request_path.write_text(json.dumps(request))
        done = subprocess.run(
            ["node", str(NODE_DIR / "run.mjs"), str(request_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"onnxruntime-{runtime} failed: {done.stderr.strip()[-2000:]}")
        reply = json.loads(done.stdout.strip().splitlines()[-1])
        results = []
        for index, outputs in enumerate(reply["outputs"]):
            arrays = {
                o["name"]: np.fromfile(f"{request_path}.{index}.{k}.bin", "<f4").reshape(o["dims"])
                for k, o in enumerate(outputs)
            }
            order = sorted(arrays, key=lambda name: int(name.rsplit("_", 1)[-1]))
            results.append([arrays[name] for name in order])
        return reply, results


def runner(path, runtime, input_names):
    """`(inputs: list of arrays) -> list of outputs` running `path` in onnxruntime-`runtime`."""

    def run(inputs):
        cases = [list(zip(input_names, (np.asarray(x) for x in inputs), strict=True))]
        return run_cases(path, runtime, cases)[1][0]

    return run
