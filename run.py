"""The tf_simclr command line from a checkout: the same command as the installed `tf-simclr`
and `python -m tf_simclr` (the code is tf_simclr/cli.py).

python run.py --mode=train_then_eval            # the embedded default dataset, a few minutes
python run.py --helpfull                        # every flag
python run.py --flagfile=my_run.flags  # flags read from a file (recipes: README)
"""

from tf_simclr.cli import console_main

if __name__ == "__main__":
    console_main()
