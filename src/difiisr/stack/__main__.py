"""``python -m difiisr.stack``: see ``difiisr.stack.cli``."""

import sys

from difiisr.stack.cli import main

if __name__ == "__main__":
    sys.exit(main())
