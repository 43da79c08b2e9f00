"""Nothing lost, nothing half-written: the output-file rules shared by every exporter.

An exporter writes its artifact to a hidden temporary path beside the target (same directory, so the final
move is a rename on one filesystem), validates it there, and only then moves it into place. An existing
target is never replaced unless the caller passes `force=True`. When anything fails in between (the
conversion or the validation), the temporary output is removed and the target is left as it was.
"""

import contextlib
import os
import shutil
import uuid


def check_target(path, force):
    """Raise unless `path` may be written.

    Args:
        path: the artifact's final path (a file or a directory).
        force: whether an existing `path` may be replaced.

    Raises:
        FileExistsError: if `path` exists and `force` is false.
        FileNotFoundError: if the directory that should hold `path` does not exist.
    """
    path = os.fspath(path)
    if os.path.lexists(path) and not force:
        raise FileExistsError(
            f"Output {path!r} already exists; pass force=True (--force) to replace it."
        )
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"Output directory {parent!r} does not exist.")


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def staged_output(path, force=False):
    """Yield a temporary path beside `path`; move it to `path` when the block succeeds.

    The temporary path keeps `path`'s suffix (converters such as LiteRT's check it). On success the
    temporary output replaces `path` (an existing `path` only with `force`); on any exception it is
    removed and the exception propagates, leaving `path` untouched.

    Args:
        path: the artifact's final path (a file or a directory).
        force: whether an existing `path` may be replaced. Defaults to `False`.

    Yields:
        The temporary path (a string) to write the artifact to.

    Raises:
        FileExistsError: if `path` exists and `force` is false (checked before and after the block).
        FileNotFoundError: if the directory that should hold `path` does not exist.
    """
    path = os.path.abspath(os.fspath(path))
    check_target(path, force)
    parent, name = os.path.split(path)
    stem, suffix = os.path.splitext(name)
    tag = uuid.uuid4().hex[:8]
    staging = os.path.join(parent, f".{stem}.tmp-{tag}{suffix}")
    try:
        yield staging
        if not os.path.lexists(staging):
            raise FileNotFoundError(f"The exporter wrote nothing to {staging!r}.")
        check_target(path, force)  # another process may have created it meanwhile
        if os.path.isdir(staging) and os.path.lexists(path):
            # A directory cannot be renamed over another one: move the old one aside first.
            retired = os.path.join(parent, f".{stem}.old-{tag}{suffix}")
            os.replace(path, retired)
            os.replace(staging, path)
            _remove(retired)
        else:
            os.replace(staging, path)
    finally:
        _remove(staging)
