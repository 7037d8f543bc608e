"""``python -m jaxgan ...`` is the ``jaxgan`` command."""

import sys

from jaxgan.cli import main

sys.exit(main())
