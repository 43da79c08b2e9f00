"""Nothing lost, nothing half-written: the output-file rules shared by every exporter.

An exporter writes its artifact to a hidden temporary path beside the target (same directory, so the final
move is a rename on one filesystem), validates it there, and only then moves it into place. An existing
target is never replaced unless the caller passes `force=True`, and even then only when it is an
artifact of the same kind: a file for a file format, a SavedModel directory (nothing else inside) for
SavedModel. Paths an exporter cannot safely own are refused before anything is converted: an empty path,
the current directory or any of its ancestors, and a path that is or holds one of the inputs (the model
file). When anything fails in between (the conversion or the validation), the temporary output is removed
and the target is left as it was.
"""

import contextlib
import os
import shutil
import uuid

# What `model.export(format="tf_saved_model")` and `tf.saved_model.save` write into a SavedModel directory.
SAVEDMODEL_ENTRIES = frozenset(
    {
        "saved_model.pb",
        "saved_model.pbtxt",
        "variables",
        "assets",
        "fingerprint.pb",
        "keras_metadata.pb",
    }
)
KINDS = ("file", "savedmodel")


def _is_within(path, directory):
    """Whether `path` is `directory` or lies inside it (both absolute, normalised)."""
    return os.path.commonpath([path, directory]) == directory


def _resolve(path):
    """`path` as an absolute, normalised path with symlinks resolved."""
    return os.path.realpath(os.path.abspath(path))


def is_savedmodel_dir(path):
    """Whether `path` is a directory holding a SavedModel and nothing else (see `SAVEDMODEL_ENTRIES`)."""
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    entries = set(os.listdir(path))
    return bool(entries & {"saved_model.pb", "saved_model.pbtxt"}) and entries <= SAVEDMODEL_ENTRIES


def check_target(path, force, *, kind="file", inputs=()):
    """Raise unless the exporter may write (and, with `force`, replace) `path`.

    Args:
        path: the artifact's final path (a file or a SavedModel directory).
        force: whether an existing `path` may be replaced.
        kind: `"file"` (ONNX, LiteRT) or `"savedmodel"` (a directory). Defaults to `"file"`.
        inputs: paths the export reads (the model file), which the output must neither be nor hold.
            Defaults to `()`.

    Raises:
        ValueError: if `path` is empty, the current directory or one of its ancestors, is or holds one of
            `inputs`, or exists as something other than an artifact of `kind` (a directory with other
            files in it is never replaced).
        FileExistsError: if `path` exists and `force` is false.
        FileNotFoundError: if the directory that should hold `path` does not exist.
        PermissionError: if that directory is not writable.
    """
    if kind not in KINDS:
        raise ValueError(
            f"Invalid value for argument `kind`. Expected one of {KINDS}. Received: kind={kind!r}"
        )
    raw = os.fspath(path)
    if not str(raw).strip():
        raise ValueError(f"Output path is empty. Received: path={raw!r}")
    target = _resolve(raw)
    if _is_within(os.getcwd(), target):
        raise ValueError(
            f"Refusing to write to {raw!r}: it is the current directory or one of its ancestors."
        )
    for source in inputs:
        if _is_within(_resolve(source), target):
            raise ValueError(
                f"Refusing to write to {raw!r}: it is or holds the input {os.fspath(source)!r}."
            )
    if os.path.lexists(raw):
        if not force:
            raise FileExistsError(
                f"Output {raw!r} already exists; pass force=True (--force) to replace it."
            )
        if kind == "file" and os.path.isdir(raw):
            raise ValueError(f"Refusing to replace {raw!r}: it is a directory, not a file.")
        if kind == "savedmodel" and not is_savedmodel_dir(raw):
            raise ValueError(
                f"Refusing to replace {raw!r}: it is not a SavedModel directory (it holds other "
                "files, or is a file or a link); only a SavedModel is replaced with force=True."
            )
    parent = os.path.dirname(os.path.abspath(raw))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"Output directory {parent!r} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"Output directory {parent!r} is not writable.")


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def staged_output(path, force=False, *, kind="file", inputs=()):
    """Yield a temporary path beside `path`; move it to `path` when the block succeeds.

    The temporary path keeps `path`'s suffix (converters such as LiteRT's check it). On success the
    temporary output replaces `path` (an existing `path` only with `force`, and only an artifact of
    `kind`); on any exception it is removed and the exception propagates, leaving `path` untouched. The
    only things ever removed are the temporary output and, after the new artifact is in place, the
    artifact it replaced.

    Args:
        path: the artifact's final path (a file or a directory).
        force: whether an existing `path` may be replaced. Defaults to `False`.
        kind, inputs: see `check_target`.

    Yields:
        The temporary path (a string) to write the artifact to.

    Raises:
        ValueError, FileExistsError, FileNotFoundError, PermissionError: see `check_target` (checked
            before and after the block).
    """
    check_target(path, force, kind=kind, inputs=inputs)
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    stem, suffix = os.path.splitext(name)
    tag = uuid.uuid4().hex[:8]
    staging = os.path.join(parent, f".{stem}.tmp-{tag}{suffix}")
    try:
        yield staging
        if not os.path.lexists(staging):
            raise FileNotFoundError(f"The exporter wrote nothing to {staging!r}.")
        check_target(
            path, force, kind=kind, inputs=inputs
        )  # another process may have acted meanwhile
        if os.path.isdir(staging) and os.path.lexists(path):
            # A directory cannot be renamed over another one: move the old one aside first, and back
            # if the new one cannot take its place.
            retired = os.path.join(parent, f".{stem}.old-{tag}{suffix}")
            os.replace(path, retired)
            try:
                os.replace(staging, path)
            except OSError:
                os.replace(retired, path)
                raise
            _remove(retired)
        else:
            os.replace(staging, path)
    finally:
        _remove(staging)
