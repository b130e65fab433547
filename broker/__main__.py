"""`python -m broker` does what the `pc-token-broker` command does."""

import sys

from .cli import main

sys.exit(main())
