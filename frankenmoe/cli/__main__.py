"""`python -m frankenmoe.cli`, as the `frankenmoe` command."""

import sys

from frankenmoe.cli import main

sys.exit(main())
