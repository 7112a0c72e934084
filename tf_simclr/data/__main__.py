"""``python -m tf_simclr.data``: see ``tf_simclr.data.cli``."""

import sys

from tf_simclr.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
