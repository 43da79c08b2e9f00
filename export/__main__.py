"""`python -m export ...`; see `export` for the commands."""

import sys

from export import main

sys.exit(main())
