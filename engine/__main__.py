"""`python -m engine` runs the medgrad command."""

import sys

from engine.cli import main

sys.exit(main())
