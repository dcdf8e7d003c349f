"""``python -m artopt`` runs the command line."""

import sys

from artopt.cli import main

sys.exit(main())
