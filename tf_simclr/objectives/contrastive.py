"""SimCLR's pretraining objective: NT-Xent over the two views, plus the online linear probe."""

from __future__ import annotations

import keras
from keras import ops

from tf_simclr.objectives import loss as loss_lib
from tf_simclr.objectives.base import Objective, check_positive, head_l2_share, with_total


def _num_replicas() -> int:
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


@keras.saving.register_keras_serializable(package="tf_simclr")
class ContrastivePretraining:
    """Batches {"view1", "view2"[, "label"]}: the NT-Xent loss of the two views' projections
    (`tf_simclr.objectives.loss.nt_xent_loss`, negatives from all replicas) and, when the model has a
    supervised head and the batch has labels, the online linear probe's cross-entropy on both
    views' labelled rows (its input is stop-gradient features) with its L2 term
    (`head_weight_decay`). Labels < 0 mark unlabelled images (a split such as STL-10's
    "train+unlabelled"): the contrastive loss uses every image, the probe's loss and accuracy
    only the labelled ones, averaged over those of the global batch, and
    "sup_labelled_examples" says how many images of the global batch were labelled."""

    train_mode = "pretrain"
    # The training batches it takes (tf_simclr.factory.training_dataset_fn builds them).
    batches = "two_views"
    metric_names_all = (
        "contrastive_loss",
        "sup_loss",
        "weight_decay_loss",
        "contrastive_acc",
        "contrastive_entropy",
        "sup_acc",
        "sup_labelled_examples",
    )

    def __init__(
        self,
        temperature: float = 0.5,
        hidden_norm: bool = True,
        loss_scale: str = "paper",
        head_weight_decay: float = 0.0,
    ):
        self.temperature = check_positive(temperature, "temperature")
        self.hidden_norm = hidden_norm
        self.loss_scale = loss_scale
        self.head_weight_decay = head_weight_decay

    def __call__(self, model, data, training: bool = True) -> Objective:
        if not isinstance(data, dict) or "view1" not in data or "view2" not in data:
            keys = f" keys {sorted(data)}" if isinstance(data, dict) else ""
            raise ValueError(
                "Pretraining batches must be dicts with 'view1' and 'view2' (and 'label'); "
                f"got {type(data).__name__}{keys}."
            )
        if data["view1"].shape[0] == 1 and _num_replicas() == 1:
            raise ValueError(
                "Pretraining batches need at least 2 images: with 1 the contrastive loss has "
                "no negatives and is 0 whatever the network computes."
            )
        outs = model.forward_two_views(data["view1"], data["view2"], training=training)
        z1, z2 = ops.split(outs["proj_head_output"], 2, axis=0)
        con = loss_lib.nt_xent_loss(
            z1,
            z2,
            temperature=self.temperature,
            hidden_norm=self.hidden_norm,
            loss_scale=self.loss_scale,
        )
        shares = {"contrastive_loss": con.loss}  # already this replica's share
        rates = dict(loss_lib.contrastive_metrics(con.logits, con.labels))
        labels = data.get("label")
        if "logits_sup" in outs and labels is not None:
            # Labels < 0 (unlabelled images) add nothing: pretraining on partly labelled data
            # trains the online head on the labelled rows only.
            sup = loss_lib.labelled_cross_entropy(
                outs["logits_sup"], ops.concatenate([labels, labels], axis=0)
            )
            shares["sup_loss"] = sup.share
            rates["sup_acc"] = sup.accuracy
            # Global, so the same on every replica (averaging over replicas keeps it); both
            # views carry each label, so the images are half the labelled rows.
            rates["sup_labelled_examples"] = sup.global_count / 2.0
            if self.head_weight_decay:
                shares["weight_decay_loss"] = head_l2_share(model, self.head_weight_decay)
        return with_total(model, shares, rates)

    def default_head_optimizer(self, model):
        """The online probe's own optimizer when ``compile()`` is given none: Keras' momentum
        SGD at learning rate 0.1 (trained by LARS the head would get no trust scaling and
        diverge at contrastive learning rates ~1). None when the model has no probe."""
        if not model.has_supervised_head:
            return None
        return keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)

    def metric_names(self, model) -> tuple[list[str], list[str]]:
        """(loss terms summed over replicas, rates averaged over them) for labelled batches."""
        shares, rates = ["loss", "contrastive_loss"], ["contrastive_acc", "contrastive_entropy"]
        if model.has_supervised_head:
            shares.append("sup_loss")
            rates += ["sup_acc", "sup_labelled_examples"]
            if self.head_weight_decay:
                shares.append("weight_decay_loss")
        return shares, rates

    def get_config(self) -> dict:
        return dict(
            temperature=self.temperature,
            hidden_norm=self.hidden_norm,
            loss_scale=self.loss_scale,
            head_weight_decay=self.head_weight_decay,
        )

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def from_settings(
        cls, *, temperature=0.5, hidden_norm=True, loss_scale="paper", head_weight_decay=0.0, **_
    ):
        """From the train-mode settings (`tf_simclr.objectives.for_train_mode`)."""
        return cls(temperature, hidden_norm, loss_scale, head_weight_decay)
