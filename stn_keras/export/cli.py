"""The `stn-keras-export` command line over `stn_keras.export` (also `python -m stn_keras.export`).

    stn-keras-export FORMAT MODEL.keras OUT [--target TARGET] [options]

    stn-keras-export savedmodel MODEL.keras OUT_DIR
    stn-keras-export onnx-native MODEL.keras OUT.onnx [--target tensorrt] [--opset N]
    stn-keras-export litert MODEL.keras OUT.tflite [--target litert-gpu]

The commands and their flags are built from the registry of formats and targets
(`stn_keras.export.registry`). Every command validates the artifact in the target's runtime before
moving it into place, prints the parity report, and exits non-zero with a one-line message on any
error: a missing, corrupt or non-Keras model file, an unknown custom layer, an output path it cannot
safely own (empty, the current directory or one of its parents, one holding the model, a directory
that is not a SavedModel), an existing output without `--force`, a target that cannot run the model,
or a failed validation (which leaves nothing behind). Third-party warnings and logs are kept out of
the output unless `--verbose` is given.
"""

import os
import subprocess
import sys
import warnings

from stn_keras import command_line
from stn_keras.export import registry
from stn_keras.quiet import quiet_third_party


def _add_common(command, fmt):
    command.add_argument("model", metavar="MODEL.keras", help="model saved with model.save()")
    command.add_argument("output", metavar=fmt.metavar)
    targets = registry.targets_of(fmt.name)
    command.add_argument(
        "--target",
        choices=targets,
        default=None,
        help=f"the runtime it is deployed to (default {fmt.default_target}): "
        + "; ".join(f"{t}: {registry.TARGETS[t].help}" for t in targets),
    )
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


def _add_options(command, fmt):
    """The format's own flags (`Format.options`), and `onnx`'s older spelling of `onnx-native`."""
    if "opset" in fmt.options:
        command.add_argument(
            "--opset",
            type=command_line.any_integer,
            default=None,
            help="ONNX opset (default 18; native: 19 for images, which TensorRT reads right, "
            "20 with a volume sampler)",
        )
    if fmt.name == "onnx":
        command.add_argument(
            "--native-gridsample",
            action="store_true",
            help="the same as the onnx-native command",
        )
    if fmt.name in ("onnx", "onnx-native"):
        command.add_argument(
            "--require-native",
            action="store_true",
            help="fail, writing nothing, if a sampler cannot be a GridSample (float16 images, a "
            "volume below opset 20) instead of keeping it on the gather path",
        )


def _parser():
    parser = command_line.Parser(
        prog="stn-keras-export",
        description="Export a Keras model with stn-keras layers, validated in the target runtime.",
    )
    commands = parser.add_subparsers(
        dest="format", required=True, metavar="FORMAT", parser_class=command_line.Parser
    )
    for fmt in registry.FORMATS.values():
        command = commands.add_parser(fmt.name, help=fmt.help, description=fmt.help)
        _add_common(command, fmt)
        _add_options(command, fmt)
    return parser


def _format_and_options(args):
    """The registry format the flags name and its options."""
    name = "onnx-native" if getattr(args, "native_gridsample", False) else args.format
    options = {}
    if getattr(args, "opset", None) is not None:
        options["opset"] = args.opset
    if getattr(args, "require_native", False):
        options["require_native"] = True
    return name, options


def _check_flags(parser, args):
    """Usage errors found before anything is loaded: exit status 2, the flag named."""
    name, options = _format_and_options(args)
    if options.get("require_native") and name != "onnx-native":
        parser.error("argument --require-native: needs the onnx-native command")
    if "opset" not in options:  # the default depends on the model's samplers
        return
    from stn_keras.export import onnx

    target = registry.resolve(name, args.target)[1]
    try:
        onnx.check_opset(options["opset"], name == "onnx-native")
        onnx.check_target_opset(target, options["opset"], name == "onnx-native")
    except ValueError as e:
        parser.error(f"argument --opset: {e}")


def _export(args):
    """Export as the flags say; returns `(summary line, warnings to show)`."""
    from stn_keras import export
    from stn_keras.export.onnx_gridsample import GATHER_PATH_WARNING

    name, options = _format_and_options(args)
    fmt = registry.FORMATS[name]
    export.files.check_target(args.output, args.force, kind=fmt.kind, inputs=[args.model])
    model = export.load_model(args.model, custom_modules=args.custom_module)
    if args.atol is not None:
        options["atol"] = args.atol
    # The native path's own warnings are shown even in quiet mode: they change what was written.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")
        warnings.filterwarnings("always", message=GATHER_PATH_WARNING)
        report = export.export(
            model,
            args.output,
            name,
            target=args.target,
            force=args.force,
            validate=not args.no_validate,
            **options,
        )
    notes = [str(w.message) for w in caught]
    summary = report.summary() if report is not None else f"wrote {args.output} (not validated)"
    return summary, notes


def _backend():
    """The Keras backend this process runs (importing stn_keras imported Keras already)."""
    import keras

    return keras.backend.backend()


def main(argv=None):
    """Run the command line; returns the exit status (0 on success, 1 on any error, 2 on bad usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if _backend() != "tensorflow":
        # The exporters are TensorFlow programs and a `.keras` file crosses backends: the same
        # command again, in a process whose Keras runs TensorFlow (its exit status is ours).
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        command = [
            sys.executable,
            "-m",
            "stn_keras.export",
            *(sys.argv[1:] if argv is None else argv),
        ]
        return subprocess.run(command, env=env, check=False).returncode
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
