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

import os
import sys
import warnings

from stn_keras import command_line
from stn_keras.quiet import quiet_third_party

FORMATS = ("savedmodel", "onnx", "litert")


def _parser():
    parser = command_line.Parser(
        prog="stn-keras-export",
        description="Export a Keras model with stn-keras layers, validated in the target runtime.",
    )
    commands = parser.add_subparsers(
        dest="format", required=True, metavar="FORMAT", parser_class=command_line.Parser
    )
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
            type=command_line.positive_number,
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
                "--opset",
                type=command_line.any_integer,
                default=None,
                help="ONNX opset (default 18; native: 19 for images, which TensorRT reads right, "
                "20 with a volume sampler)",
            )
            command.add_argument(
                "--native-gridsample",
                action="store_true",
                help="emit ONNX GridSample/AffineGrid instead of the gather decomposition",
            )
            command.add_argument(
                "--require-native",
                action="store_true",
                help="with --native-gridsample: fail, writing nothing, if a sampler cannot be a "
                "GridSample (float16 images, a volume below opset 20) instead of keeping it on "
                "the gather path",
            )
    return parser


def _check_flags(parser, args):
    """Usage errors found before anything is loaded: exit status 2, the flag named."""
    if args.format != "onnx":
        return
    from stn_keras.export import onnx

    if args.require_native and not args.native_gridsample:
        parser.error("argument --require-native: needs --native-gridsample")
    if args.opset is None:  # the default depends on the model's samplers (`onnx.default_opset`)
        return
    try:
        onnx.check_opset(args.opset, args.native_gridsample)
    except ValueError as e:
        parser.error(f"argument --opset: {e}")


def _export(args):
    """Export as the flags say; returns `(summary line, warnings to show)`."""
    from stn_keras import export
    from stn_keras.export.onnx_gridsample import GATHER_PATH_WARNING

    kind = "savedmodel" if args.format == "savedmodel" else "file"
    export.files.check_target(args.output, args.force, kind=kind, inputs=[args.model])
    model = export.load_model(args.model, custom_modules=args.custom_module)
    options = {"force": args.force, "validate": not args.no_validate}
    if args.atol is not None:
        options["atol"] = args.atol
    # The native path's own warnings are shown even in quiet mode: they change what was written.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")
        warnings.filterwarnings("always", message=GATHER_PATH_WARNING)
        if args.format == "savedmodel":
            report = export.export_savedmodel(model, args.output, **options)
        elif args.format == "onnx":
            report = export.export_onnx(
                model,
                args.output,
                opset=args.opset,
                native_gridsample=args.native_gridsample,
                require_native=args.require_native,
                **options,
            )
        else:
            report = export.export_litert(model, args.output, **options)
    notes = [str(w.message) for w in caught]
    summary = report.summary() if report is not None else f"wrote {args.output} (not validated)"
    return summary, notes


def main(argv=None):
    """Run the command line; returns the exit status (0 on success, 1 on any error, 2 on bad usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if not args.verbose:  # effective only when TensorFlow is not loaded yet
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        _check_flags(parser, args)
        with quiet_third_party(args.verbose):
            summary, notes = _export(args)
    except SystemExit:
        raise
    except Exception as e:  # the command line's contract: one line, no traceback
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    print(summary)
    return 0
