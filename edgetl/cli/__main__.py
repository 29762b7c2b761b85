"""``python -m edgetl.cli``: the same as ``edgetl``."""
import sys

from edgetl.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
