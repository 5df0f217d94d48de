"""`python -m splatkit` (and `torchrun ... -m splatkit train ...`): the command line."""

import sys

from splatkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
