"""``python -m dedup``: see :mod:`dedup.cli`."""

import sys

from .cli import main

sys.exit(main())
