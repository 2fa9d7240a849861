"""``python -m depth2img.cli``: the same as the ``depth2img`` command."""

import sys

from . import main

sys.exit(main())
