"""The workflows built on a Config: the training loop, the runner behind --mode, the semi-supervised recipe, teacher and warm start, export and conversion."""
