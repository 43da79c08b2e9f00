"""The `stn-keras-export` command line over `stn_keras.export` (also `python -m stn_keras.export`).

    stn-keras-export savedmodel MODEL.keras OUT_DIR
    stn-keras-export onnx MODEL.keras OUT.onnx [--opset N] [--native-gridsample]
    stn-keras-export litert MODEL.keras OUT.tflite

Every command validates the artifact in its runtime (batch sizes 1 and 5) before moving it into place,
prints the parity report, and exits non-zero with a one-line message on any error: a missing, corrupt
or non-Keras model file, an unknown custom layer, an output path it cannot safely own (empty, the current
directory or one of its parents, one holding the model, a directory that is not a SavedModel), an
existing output without `--force`, or a failed validation (which leaves nothing behind). Third-party
warnings and logs are kept out of the output unless `--verbose` is given.
"""

import argparse
import os
import sys

from stn_keras.quiet import quiet_third_party

FORMATS = ("savedmodel", "onnx", "litert")


def _parser():
    parser = argparse.ArgumentParser(
        prog="stn-keras-export",
        description="Export a Keras model with stn-keras layers, validated in the target runtime.",
    )
    commands = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    helps = {
        "savedmodel": ("SavedModel directory with a serving_default signature", "OUT_DIR"),
        "onnx": ("ONNX file, run in onnxruntime", "OUT.onnx"),
        "litert": ("LiteRT flatbuffer with builtin ops only", "OUT.tflite"),
    }
    for name in FORMATS:
        help_text, out = helps[name]
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("model", metavar="MODEL.keras", help="model saved with model.save()")
        command.add_argument("output", metavar=out)
        command.add_argument(
            "--force", action="store_true", help="replace an existing output of the same kind"
        )
        command.add_argument(
            "--verbose", action="store_true", help="show TensorFlow's and the converters' own logs"
        )
        command.add_argument(
            "--no-validate", action="store_true", help="skip running the artifact (not advised)"
        )
        command.add_argument(
            "--atol",
            type=float,
            default=None,
            help="tolerance relative to the output scale (default 1e-4)",
        )
        command.add_argument(
            "--custom-module",
            action="append",
            default=[],
            metavar="MODULE",
            help="module to import first, registering the model's custom layers (repeatable)",
        )
        if name == "onnx":
            command.add_argument(
                "--opset", type=int, default=None, help="ONNX opset (default 18, or 20 native)"
            )
            command.add_argument(
                "--native-gridsample",
                action="store_true",
                help="emit ONNX GridSample/AffineGrid instead of the gather decomposition",
            )
    return parser


def _export(args):
    from stn_keras import export

    if args.format == "onnx":  # fail fast on a bad opset, before loading anything
        export.onnx.check_opset(
            args.opset
            if args.opset is not None
            else (
                export.onnx.NATIVE_OPSET if args.native_gridsample else export.onnx.DEFAULT_OPSET
            ),
            args.native_gridsample,
        )
    kind = "savedmodel" if args.format == "savedmodel" else "file"
    export.files.check_target(args.output, args.force, kind=kind, inputs=[args.model])
    model = export.load_model(args.model, custom_modules=args.custom_module)
    options = {"force": args.force, "validate": not args.no_validate}
    if args.atol is not None:
        options["atol"] = args.atol
    if args.format == "savedmodel":
        report = export.export_savedmodel(model, args.output, **options)
    elif args.format == "onnx":
        report = export.export_onnx(
            model,
            args.output,
            opset=args.opset,
            native_gridsample=args.native_gridsample,
            **options,
        )
    else:
        report = export.export_litert(model, args.output, **options)
    return report.summary() if report is not None else f"wrote {args.output} (not validated)"


def main(argv=None):
    """Run the command line; returns the exit status (0 on success, 1 on any error, 2 on bad usage)."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if not args.verbose:  # effective only when TensorFlow is not loaded yet
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with quiet_third_party(args.verbose):
            summary = _export(args)
    except Exception as e:  # the command line's contract: one line, no traceback
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(summary)
    return 0
