"""The one skeleton every exporter follows: stage, write, run in the target runtime, compare, move.

Each exporter supplies only what is its own: how to write the artifact to a path and how to run it.
`export_validated` does the rest (`stn_keras.export.files` for the file rules,
`stn_keras.export.validation` for the comparison).
"""

from stn_keras.export import files, validation


def export_validated(
    model,
    path,
    *,
    format,
    write,
    runner,
    kind="file",
    force=False,
    validate=True,
    batch_sizes=validation.DEFAULT_BATCH_SIZES,
    atol=validation.DEFAULT_ATOL,
):
    """Write `model`'s artifact beside `path`, validate it in its runtime, then move it into place.

    Args:
        model: the Keras model being exported.
        path: the artifact's final path.
        format: the report's format name (`"savedmodel"`, `"onnx"`, ...).
        write: callable `(staging_path) -> None` writing the artifact.
        runner: callable `(staging_path) -> (run, runtime)`: `run` maps a list of input arrays to the
            artifact's outputs in the model's flattened order, `runtime` names the runtime.
        kind: `"file"` or `"savedmodel"` (see `files.check_target`). Defaults to `"file"`.
        force: whether to replace an existing artifact at `path`. Defaults to `False`.
        validate: whether to run and compare the artifact before moving it into place. Defaults to
            `True`.
        batch_sizes: batch sizes to validate at. Defaults to `validation.DEFAULT_BATCH_SIZES`.
        atol: validation tolerance (see `validation.DEFAULT_ATOL`). Defaults to `1e-4`.

    Returns:
        The `ParityReport`, or `None` with `validate=False`.

    Raises:
        ValueError, FileExistsError, FileNotFoundError, PermissionError: see `files.check_target`.
        ValidationError: if the artifact does not reproduce the model; nothing is written then.
    """
    report = None
    with files.staged_output(path, force=force, kind=kind) as staging:
        write(staging)
        if validate:
            run, runtime = runner(staging)
            report = validation.check_parity(
                model,
                run,
                format=format,
                path=path,
                runtime=runtime,
                batch_sizes=batch_sizes,
                atol=atol,
            )
            validation.raise_unless_passed(report)
    return report
