"""``python -m kdtool`` (what ``torchrun -m kdtool distill RECIPE`` runs)."""

import sys

from kdtool.cli import main

sys.exit(main())
