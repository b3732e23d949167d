"""``python -m pydron ...``: the command line (see :mod:`pydron.cli`)."""
import sys

from pydron.cli import main

if __name__ == "__main__":
    sys.exit(main())
