"""``python -m engine``: the headless command line (no Qt needed)."""

import sys

from .cli import main

sys.exit(main())
