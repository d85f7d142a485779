"""`python -m keras_optx.compare`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
