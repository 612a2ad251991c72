"""``python -m supervisor --app MODULE``: ``flows supervise`` from a checkout."""

import sys

from flows.supervisor.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
