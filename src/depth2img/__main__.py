"""``python -m depth2img``: the same as the ``depth2img`` command."""

import sys

from .cli import main

sys.exit(main())
