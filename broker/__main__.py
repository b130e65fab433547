"""`python -m broker` does what the `pc-token-broker` command does."""

import sys

from broker.cli.main import main

sys.exit(main())
