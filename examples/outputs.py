"""Output directories of the examples: an example writes only into a directory it created (or
one the user hands over with `--force`), replaces only the files it writes, and writes each one
whole (staged beside it, then renamed), so that nothing of the user's is lost or half-written.
"""

import os
import pathlib
import sys

MARKER = ".stn-keras-example"  # holds the name of the example that created the directory


def claim_output(out, example, force=False):
    """Create `out` for `example`, or accept it if a run of the same example created it.

    Args:
        out: the output directory.
        example: the example's name, e.g. `"register"`, recorded in the directory's marker.
        force: accept a non-empty directory this example did not create; it still replaces
            only the files it writes. Defaults to `False`.

    Returns:
        `out` as a `pathlib.Path`.

    Raises:
        ValueError: if `out` is a file, or a non-empty directory this example did not create
            (without `force`).
    """
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"`--out` must be a directory. Received: out={str(out)!r} (a file)")
    marker = out / MARKER
    ours = marker.is_file() and marker.read_text().strip() == example
    if out.is_dir() and any(out.iterdir()) and not ours and not force:
        raise ValueError(
            f"`--out` is a non-empty directory that this example did not create; refusing to "
            f"write into it (pass --force to write into it anyway, replacing only the files "
            f"this example writes). Received: out={str(out)!r}"
        )
    out.mkdir(parents=True, exist_ok=True)
    if not ours:
        write_atomically(marker, lambda path: pathlib.Path(path).write_text(example + "\n"))
    return out


def claim_for_command(prog, out, example, force=False):
    """`claim_output` for a command line: the directory, or `None` once the refusal is printed as
    one line (`PROG: error: ...`) for the caller to exit with status 2."""
    try:
        return claim_output(out, example, force)
    except ValueError as error:
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        return None


def write_atomically(path, write):
    """Call `write(partial_path)`, then rename the result into `path` (no half-written file).

    The partial path is a hidden name beside `path` that keeps its whole name as suffix (Keras
    and matplotlib read the format from it).
    """
    path = pathlib.Path(path)
    partial = path.with_name(f".partial-{os.getpid()}-{path.name}")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path, text):
    """`write_atomically` for text."""
    write_atomically(path, lambda partial: pathlib.Path(partial).write_text(text))
