"""python -m tf_simclr.convert: the command that converts reference SimCLR models (published
SavedModels and ckpt-N training checkpoints) into tf_simclr model_dirs.

The converter itself is tf_simclr.workflows.convert; this module keeps the documented command.
"""

import sys

from tf_simclr.workflows.convert import main

if __name__ == "__main__":
    sys.exit(main())
