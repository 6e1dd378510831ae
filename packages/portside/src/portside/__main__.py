"""``python -m portside``: the ``portside`` console command (e.g. ``python -m portside check``)."""

import sys

from portside.check import main

if __name__ == "__main__":
    sys.exit(main())
