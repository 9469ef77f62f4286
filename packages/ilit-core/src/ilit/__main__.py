"""``python -m ilit``: the ``ilit`` command."""

import sys

from .cli import main

sys.exit(main())
