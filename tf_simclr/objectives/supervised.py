"""Supervised fine-tuning: the cross-entropy of the network's supervised head."""

from __future__ import annotations

import keras

from tf_simclr.objectives import loss as loss_lib
from tf_simclr.objectives.base import Objective, head_l2_share, labelled_images, with_total


@keras.saving.register_keras_serializable(package="tf_simclr")
class SupervisedFineTuning:
    """Batches {"image", "label"} (or (image, label) tuples): the supervised head's
    cross-entropy, trained through the network, plus its L2 term (`head_weight_decay`)."""

    train_mode = "finetune"
    # The training batches it takes (tf_simclr.factory.training_dataset_fn builds them).
    batches = "labelled_subset"
    metric_names_all = ("sup_loss", "weight_decay_loss", "sup_acc")

    def __init__(self, head_weight_decay: float = 0.0):
        self.head_weight_decay = head_weight_decay

    def __call__(self, model, data, training: bool = True) -> Objective:
        images, labels = labelled_images(data)
        outs = model(images, training=training)
        if "logits_sup" not in outs:
            raise ValueError("Fine-tuning needs a supervised head (num_classes >= 1).")
        sup = loss_lib.labelled_cross_entropy(outs["logits_sup"], labels)
        shares, rates = {"sup_loss": sup.share}, {"sup_acc": sup.accuracy}
        if self.head_weight_decay:
            shares["weight_decay_loss"] = head_l2_share(model, self.head_weight_decay)
        return with_total(model, shares, rates)

    def metric_names(self, model) -> tuple[list[str], list[str]]:
        """(loss terms summed over replicas, rates averaged over them)."""
        del model
        shares = ["loss", "sup_loss"] + (["weight_decay_loss"] if self.head_weight_decay else [])
        return shares, ["sup_acc"]

    def get_config(self) -> dict:
        return dict(head_weight_decay=self.head_weight_decay)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def from_settings(cls, *, head_weight_decay=0.0, **_):
        """From the train-mode settings (`tf_simclr.objectives.for_train_mode`)."""
        return cls(head_weight_decay)
