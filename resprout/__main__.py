"""``python -m resprout`` (and ``torchrun -m resprout``) runs the command line."""

import sys

from resprout.cli import main

sys.exit(main())
