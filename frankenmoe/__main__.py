"""`python -m frankenmoe`: the same command line as the `frankenmoe` script."""

import sys

from frankenmoe.cli import main

sys.exit(main())
