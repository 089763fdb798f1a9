"""``python -m forseti``: the same as the ``forseti`` command."""

import sys

from .cli import main

sys.exit(main())
