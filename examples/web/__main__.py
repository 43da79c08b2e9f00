"""Build the web example's site: the page, the model as ONNX for the `web` target, sample digits.

    python -m examples.web --model st_cnn.keras --out artifacts/web [--samples 12] [--force]

`--model` is a distorted-digits ST-CNN saved by the quick start or `examples.distorted_digits` (its
input `(N, 42, 42, 1)`). The site holds `index.html` and `app.js` (from `static/`), `model.onnx` (the
model with a second output, the transformer's 28x28 view, exported with native `GridSample` for
the `web` target and validated against Keras before it is written), `samples.json` (held-out
digits, distorted as in training) and `ort/` (onnxruntime-web's WebAssembly build, from
`examples/web/node_modules`, installed by `npm ci --prefix examples/web`). Serve the folder with
any static file server. `--out` follows the examples' rules (`examples/outputs.py`).
"""

import json
import os
import pathlib
import shutil
import sys

if "--verbose" not in sys.argv[1:]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from examples import arguments  # noqa: E402
from examples.outputs import claim_for_command, write_atomically, write_text  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
ORT_DIST = HERE / "node_modules" / "onnxruntime-web" / "dist"
# The WebAssembly build the page imports: the module, and the glue and binary it loads beside it.
ORT_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
STATIC_FILES = ("index.html", "app.js")
EXAMPLE = "web"


def viewer_model(model):
    """`model` with a second output: its spatial transformer's view (what the page shows)."""
    import keras

    import stn_keras

    transformers = [x for x in model.layers if isinstance(x, stn_keras.SpatialTransformer)]
    if len(transformers) != 1:
        raise ValueError(
            f"Model {model.name!r} has {len(transformers)} SpatialTransformer layers; the web "
            "example shows the view of exactly one."
        )
    return keras.Model(model.inputs[0], [model.outputs[0], transformers[0].output], name="viewer")


def sample_digits(count, size, seed=0):
    """`count` held-out digits distorted as in training (RTS), on a `size` canvas, and labels."""
    from examples import distorted_digits

    digits = distorted_digits.load_digits_frames(seed=seed)
    _, _, images, labels = distorted_digits.make_data("RTS", digits, 1, 1, seed)
    if images.shape[1] != size:
        raise ValueError(
            f"The model takes {size}x{size} images; the samples are {images.shape[1]}."
        )
    return images[:count], labels[:count]


def _check_ort():
    missing = [name for name in ORT_FILES if not (ORT_DIST / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"onnxruntime-web is not installed ({ORT_DIST / missing[0]} is missing): run "
            "`npm ci --prefix examples/web`."
        )


def build_site(model_path, out, samples=12):
    """Write the site into `out` (an output directory already claimed); returns the export report."""
    from stn_keras import export

    _check_ort()
    model = viewer_model(export.load_model(model_path))
    report = export.export(model, out / "model.onnx", "onnx-native", target="web", force=True)
    size = model.inputs[0].shape[1]
    images, labels = sample_digits(samples, size)
    payload = {
        "images": [[round(float(v), 6) for v in image.ravel()] for image in images],
        "labels": [int(label) for label in labels],
    }
    write_text(out / "samples.json", json.dumps(payload))
    for name in STATIC_FILES:
        write_atomically(
            out / name, lambda partial, name=name: shutil.copyfile(HERE / "static" / name, partial)
        )
    (out / "ort").mkdir(exist_ok=True)
    for name in ORT_FILES:
        write_atomically(
            out / "ort" / name, lambda partial, name=name: shutil.copyfile(ORT_DIST / name, partial)
        )
    return report


def main(argv=None):
    parser = arguments.Parser(prog="python -m examples.web", description=__doc__)
    parser.add_argument("--model", type=pathlib.Path, required=True, help="an ST-CNN .keras file")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("artifacts/web"))
    parser.add_argument("--samples", type=arguments.positive_int, default=12)
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty --out this example did not create",
    )
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own logs")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"argument --model: {str(args.model)!r} is not a file")
    out = claim_for_command(parser.prog, args.out, EXAMPLE, args.force)
    if out is None:
        return 2
    from stn_keras.quiet import quiet_third_party

    with quiet_third_party(args.verbose):
        report = build_site(args.model, out, args.samples)
    print(report.summary())
    print(f"site in {out}/: serve it with `python -m http.server --directory {out} 8000`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
