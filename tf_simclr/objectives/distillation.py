"""SimCLRv2's distillation objective: a frozen teacher's class distribution as the target.

The loss (SimCLRv2, Eq. 2 and 3) is the cross-entropy between the teacher's and the student's
class distributions, both softened by a temperature tau:

    L = alpha * L_sup + (1 - alpha) * L_distill,
    L_distill = mean_i [ -sum_y softmax(t_i / tau)_y * log softmax(s_i / tau)_y ],

over every image of the batch, and L_sup the cross-entropy with the labels of the batch's
labelled images (label >= 0). The paper writes the weights the other way round (its alpha
weighs the distillation term); here alpha = 0 is pure distillation, the paper's main setting.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_simclr.objectives import loss as loss_lib
from tf_simclr.objectives.base import (
    Objective,
    head_l2_share,
    labelled_images,
    with_total,
)


def soft_targets(teacher_logits, temperature: float) -> tf.Tensor:
    """The teacher's class distribution softened by `temperature` (rows sum to one)."""
    return tf.nn.softmax(tf.cast(teacher_logits, tf.float32) / temperature, axis=-1)


def distillation_loss(teacher_logits, student_logits, temperature: float) -> tf.Tensor:
    """Per-example cross-entropy between the softened teacher and student distributions [B]
    (no gradient reaches the teacher)."""
    targets = tf.stop_gradient(soft_targets(teacher_logits, temperature))
    log_student = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / temperature, axis=-1)
    return -tf.reduce_sum(targets * log_student, axis=-1)


def distillation_terms(
    student_logits, teacher_logits, labels, *, temperature: float, alpha: float
) -> tuple[dict, dict]:
    """(shares, rates) of one replica's distillation batch: "distill_loss" and, with alpha > 0,
    "sup_loss" are this replica's shares of the global batch means (summed over replicas they
    give the loss of the whole batch, with the supervised mean over all labelled images of all
    replicas); "teacher_agreement" is the fraction of images whose top class the student
    shares with the teacher."""
    per_example = distillation_loss(teacher_logits, student_logits, temperature)
    count = tf.cast(tf.shape(per_example)[0], tf.float32)
    global_count = loss_lib.sum_over_replicas(count)
    shares = {"distill_loss": (1.0 - alpha) * tf.reduce_sum(per_example) / global_count}
    if alpha > 0:
        sup = loss_lib.labelled_cross_entropy(student_logits, labels)
        shares["sup_loss"] = alpha * sup.share
    agree = tf.equal(tf.argmax(student_logits, axis=-1), tf.argmax(teacher_logits, axis=-1))
    rates = {"teacher_agreement": tf.reduce_mean(tf.cast(agree, tf.float32))}
    return shares, rates


@keras.saving.register_keras_serializable(package="tf_simclr")
class Distillation:
    """Batches {"image", "label", "teacher_logits"} (the frozen teacher's logits of the same
    images; labels < 0 mark unlabelled images): `distillation_terms` plus the supervised
    head's L2 term (`head_weight_decay`)."""

    train_mode = "distill"
    # The training batches it takes (tf_simclr.factory.training_dataset_fn builds them).
    batches = "all_images"
    metric_names_all = ("distill_loss", "sup_loss", "weight_decay_loss", "teacher_agreement")

    def __init__(self, temperature: float = 1.0, alpha: float = 0.0, head_weight_decay=0.0):
        if not temperature > 0 or not 0 <= alpha <= 1:
            raise ValueError(
                "distill_temperature must be > 0 and distill_alpha in [0, 1]; got "
                f"{temperature} and {alpha}."
            )
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.head_weight_decay = head_weight_decay

    def __call__(self, model, data, training: bool = True) -> Objective:
        images, labels = labelled_images(data)
        outs = model(images, training=training)
        if not isinstance(data, dict) or "teacher_logits" not in data:
            raise ValueError(
                "Distillation batches need 'teacher_logits' (the frozen teacher's logits "
                "of the same images) beside 'image' and 'label'."
            )
        shares, rates = distillation_terms(
            outs["logits_sup"],
            data["teacher_logits"],
            labels,
            temperature=self.temperature,
            alpha=self.alpha,
        )
        if self.head_weight_decay:
            shares["weight_decay_loss"] = head_l2_share(model, self.head_weight_decay)
        return with_total(model, shares, rates)

    def metric_names(self, model) -> tuple[list[str], list[str]]:
        """(loss terms summed over replicas, rates averaged over them)."""
        del model
        shares = ["loss", "distill_loss"] + (["sup_loss"] if self.alpha > 0 else [])
        shares += ["weight_decay_loss"] if self.head_weight_decay else []
        return shares, ["teacher_agreement"]

    def get_config(self) -> dict:
        return dict(
            temperature=self.temperature,
            alpha=self.alpha,
            head_weight_decay=self.head_weight_decay,
        )

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def from_settings(
        cls, *, distill_temperature=1.0, distill_alpha=0.0, head_weight_decay=0.0, **_
    ):
        """From the train-mode settings (`tf_simclr.objectives.for_train_mode`)."""
        return cls(distill_temperature, distill_alpha, head_weight_decay)
