"""`python -m stn_keras.export ...`; see `stn_keras.export.cli` for the commands."""

import sys

from stn_keras.export.cli import main

sys.exit(main())
