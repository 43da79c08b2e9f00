"""`python -m export`: the repository's thin front over the installed `stn-keras-export` command line.

See `stn_keras.export.cli` for the commands; this package only lets a checkout run them by this name.
"""

import os
import sys

# Set before TensorFlow loads (which `stn_keras` does), so its start-up logs stay quiet too.
if "--verbose" not in sys.argv[1:]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from stn_keras.export.cli import main  # noqa: E402

__all__ = ["main"]
