"""What every training objective returns for one batch, and the terms they share."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf
from keras import ops

from tf_simclr.training.distribute import replica_share


class Objective(NamedTuple):
    """One batch's objective on one replica.

    total: this replica's share of the global objective (summed over replicas, the strategies'
        gradient all-reduce gives the full gradient). shares: the loss terms, as shares
        ("contrastive_loss", "sup_loss", "weight_decay_loss", ...). rates: per-replica rates to
        average over replicas ("contrastive_acc", ...), or values of the global batch that
        every replica holds alike, which averaging keeps ("sup_acc", "sup_labelled_examples").
    """

    total: tf.Tensor
    shares: dict
    rates: dict

    def shares_with_total(self) -> dict:
        return {"loss": self.total, **self.shares}

    def metrics(self) -> dict:
        """Every metric of this replica: {"loss": total, **shares, **rates}."""
        return {**self.shares_with_total(), **self.rates}


def head_l2_share(model, weight_decay: float):
    """This replica's share of the supervised head's L2 term, weight_decay / 2 * ||kernel||^2
    (the reference regularises the head this way instead of through LARS's weight decay)."""
    kernel = model.supervised_head.kernel
    return replica_share(weight_decay * 0.5 * ops.sum(ops.square(kernel)))


def with_total(model, shares: dict, rates: dict) -> Objective:
    """The Objective of `shares` and `rates`: the total is the sum of the shares plus the
    regularisation losses of a user's encoder (Keras layer losses), if any."""
    total = ops.sum(ops.stack([ops.cast(v, "float32") for v in shares.values()]))
    if model.losses:
        total = total + replica_share(ops.cast(ops.sum(model.losses), "float32"))
    return Objective(total, shares, rates)


def labelled_images(data):
    """(images, labels) of a labelled batch: {"image", "label"} or an (image, label) tuple."""
    if isinstance(data, dict):
        if "image" not in data or "label" not in data:
            raise ValueError(
                f"Fine-tune batches need 'image' and 'label'; got keys {sorted(data)}."
            )
        return data["image"], data["label"]
    return data[0], data[1]


def check_positive(value: float, name: str) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}.")
    return float(value)
