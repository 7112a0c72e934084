"""Training objectives, apart from the network: what the loss of one batch is.

Each objective is a small callable, ``objective(model, batch, training) -> Objective`` (the
total, its loss terms and its rates), with ``metric_names(model)``. `SimCLRModel` holds the one
its train mode chose (`for_train_mode`), and both ``fit()`` and tf_simclr's training loop take
their step through it. A new objective is a new module here and one entry in OBJECTIVES; its
``batches`` attribute names the training batches it takes ("two_views", "labelled_subset" or
"all_images", which tf_simclr.factory builds), and its train mode is listed in
tf_simclr.choices.TRAIN_MODES (the settings check it without importing TensorFlow; a test
keeps the two lists equal).
"""

from __future__ import annotations

from tf_simclr.objectives.base import Objective
from tf_simclr.objectives.contrastive import ContrastivePretraining
from tf_simclr.objectives.distillation import Distillation
from tf_simclr.objectives.supervised import SupervisedFineTuning

__all__ = [
    "OBJECTIVES",
    "ContrastivePretraining",
    "Distillation",
    "Objective",
    "SupervisedFineTuning",
    "for_train_mode",
]

# The objective of each train mode (tf_simclr.choices.TRAIN_MODES lists the same names).
OBJECTIVES = {
    "pretrain": ContrastivePretraining,
    "finetune": SupervisedFineTuning,
    "distill": Distillation,
}


def for_train_mode(train_mode: str, **settings):
    """The objective of `train_mode`, built from the settings that apply to it (`settings`:
    temperature, hidden_norm, loss_scale, head_weight_decay, distill_temperature,
    distill_alpha; each objective takes the ones it uses, with its defaults for the rest)."""
    if train_mode not in OBJECTIVES:
        raise ValueError(f"train_mode must be one of {tuple(OBJECTIVES)}, got {train_mode!r}.")
    return OBJECTIVES[train_mode].from_settings(**settings)
