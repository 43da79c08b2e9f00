"""Command-line checks shared by `stn-keras-export` and the examples: every flag is checked before
any work starts.

A bad value ends the command with one line that names the flag and what it accepts, exit status 2,
and nothing written (`Parser.error`). The types here are argparse `type=` callables.
"""

import argparse
import math
import sys


class Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line: `PROG: error: argument --flag: ...`."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2)


def integer(minimum):
    """An argparse type: an integer >= `minimum` (no silent substitution of 0 or -1)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}; received {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; received {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def positive_number(text):
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0; received {text!r}")
    return value


def any_integer(text):
    """An argparse type: an integer, range checked later (e.g. an opset against the ONNX
    installed)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer; received {text!r}") from None


positive_int = integer(1)
nonnegative_int = integer(0)
