"""Runs the synthetic-dataset command line."""

import sys

from .cli import main

sys.exit(main())
