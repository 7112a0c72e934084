"""python -m tf_simclr: the tf-simclr command line (tf_simclr.cli).

python -m tf_simclr --mode=train_then_eval   # the embedded default dataset, a few minutes
python -m tf_simclr --helpfull               # every flag
"""

from tf_simclr.cli import console_main

if __name__ == "__main__":
    console_main()
