"""SimCLR model: encoder + projection head + supervised head, with a Keras-native train_step.

Two-view batch norm: like the reference code, the two views of a pretraining batch go through
the network as ONE concatenated batch of 2B images (``forward_two_views``), so every batch norm
layer (encoder and projection head) normalises with statistics over both views. Rows [:B] of
every output are view 1, rows [B:] view 2. With ``global_bn=True`` the statistics are further
synchronised across replicas (``keras.layers.BatchNormalization(synchronized=True)``).

Usage from user code (no CLI needed)::

    encoder = tf_simclr.network.resnet.build_resnet(18, input_shape=(32, 32, 3))   # or any Keras model
    model = SimCLRModel(encoder, num_classes=10, temperature=0.5)
    model.compile(optimizer=tf_simclr.training.optim.LARS(learning_rate=1.0, weight_decay=1e-4))
    model.fit(two_view_ds)     # elements {"view1": [B,H,W,3], "view2": ..., "label": [B]}

No ``build()`` is needed first. A label < 0 marks an unlabelled image: the contrastive loss uses
every image, the online supervised head only the labelled ones.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from tf_simclr import objectives, validation
from tf_simclr.choices import SUPERVISED_TRAIN_MODES, TRAIN_MODES
from tf_simclr.network.heads import DEFAULT_NUM_PROJ_LAYERS, PROJ_HEAD_MODES, ProjectionHead  # noqa: F401
from tf_simclr.network.resnet import freeze_up_to_block, layer_groups
from tf_simclr.objectives import Objective
from tf_simclr.objectives.loss import labelled_cross_entropy

SUPERVISED_HEAD_NAME = "head_supervised"


def _on_tpu() -> bool:
    # tf.debugging assertions cannot run inside TPU computations.
    return isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy)


def _num_replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


# The settings of the objective a train mode chooses, still accepted by SimCLRModel as keywords.
OBJECTIVE_SETTINGS = (
    "temperature",
    "hidden_norm",
    "loss_scale",
    "head_weight_decay",
    "distill_temperature",
    "distill_alpha",
)
# Network settings the model reads back as attributes.
_ATTRIBUTES = (
    "num_classes",
    "proj_head_mode",
    "ft_proj_selector",
    "train_mode",
    "lineareval_while_pretraining",
    "global_bn",
    "fine_tune_after_block",
    "fused_batch_norm",
    "ft_update_unused_head_bn",
)


def _check_train_mode(train_mode: str, num_classes, fine_tune_after_block: int) -> None:
    if train_mode not in TRAIN_MODES:
        raise ValueError(f"train_mode must be one of {TRAIN_MODES}, got {train_mode!r}.")
    supervised = train_mode in SUPERVISED_TRAIN_MODES
    if fine_tune_after_block != -1 and not supervised:
        raise ValueError(
            "fine_tune_after_block only applies to train_mode='finetune' or 'distill'; "
            f"got fine_tune_after_block={fine_tune_after_block} with train_mode={train_mode!r}."
        )
    if supervised and not num_classes:
        raise ValueError(f"train_mode={train_mode!r} needs num_classes >= 1.")


def _choose_objective(train_mode: str, objective, settings: dict):
    """`objective` if given (it must be for `train_mode`), else the train mode's own objective
    built from `settings` (checked there)."""
    if objective is None:
        return objectives.for_train_mode(train_mode, **settings)
    if settings:
        raise ValueError(
            f"Objective settings ({', '.join(sorted(settings))}) configure the objective the "
            "train mode chooses; with objective= given, set them on that objective instead."
        )
    if getattr(objective, "train_mode", train_mode) != train_mode:
        raise ValueError(
            f"objective {type(objective).__name__} is for train_mode="
            f"{objective.train_mode!r}, but the model is built for {train_mode!r}."
        )
    return objective


def _check_ft_proj_selector(ft_proj_selector: int, projection_head) -> None:
    n_hiddens = projection_head.num_layers + 1
    if not 0 <= ft_proj_selector < n_hiddens:
        raise ValueError(
            f"ft_proj_selector={ft_proj_selector} is out of range for proj_head_mode="
            f"{projection_head.mode!r} with {projection_head.num_layers} layer(s); use 0.."
            f"{n_hiddens - 1} (0 = encoder output)."
        )


def _frozen_layers(encoder, train_mode: str, fine_tune_after_block: int) -> list:
    """Fine-tuning with fine_tune_after_block=k: freezes the stem and block groups 1..k of
    `encoder` (all of it for k = 4) and returns the frozen layers."""
    if train_mode not in SUPERVISED_TRAIN_MODES:
        return []
    freeze_up_to_block(encoder, fine_tune_after_block)
    if fine_tune_after_block == 4:
        return [encoder]
    if fine_tune_after_block < 0:
        return []
    groups = layer_groups(encoder)
    names = ["stem"] + [f"block_group{i}" for i in range(1, fine_tune_after_block + 1)]
    return [layer for g in names for layer in groups[g]]


@keras.saving.register_keras_serializable(package="tf_simclr")
class SimCLRModel(keras.Model):
    """SimCLR network: ``encoder`` -> projection head -> (optional) supervised head.

    ``encoder`` is any Keras model/layer mapping images to either a dict containing
    ``"final_avg_pool"`` [B, D] (``tf_simclr.network.resnet.build_resnet``), a [B, D] tensor, or a
    [B, H, W, C] feature map (global-average-pooled here; e.g. keras.applications with
    ``include_top=False``).

    ``call(images, training=False)`` returns a dict with the encoder endpoints plus
    ``proj_head_input`` (h), ``proj_head_output`` (z) and, when a supervised head exists,
    ``logits_sup``. Pretraining: the supervised head (``lineareval_while_pretraining``) sees
    ``stop_gradient`` of the ``ft_proj_selector``-th hidden of the projection head (0 = h), so it
    never changes the representation. Fine-tuning (``train_mode="finetune"``): the head is trained
    through, and ``fine_tune_after_block=k`` freezes the stem and block groups 1..k
    (``trainable=False``: no updates, BN in inference mode); projection-head layers after
    ``ft_proj_selector`` are unused and frozen too.

    ``train_step`` / ``test_step`` make ``compile()`` + ``fit()`` / ``evaluate()`` work on
    pretraining batches ``{"view1", "view2", "label"}`` (NT-Xent + supervised cross-entropy) and,
    in fine-tune mode, on ``{"image", "label"}`` batches (or ``(image, label)`` tuples).

    The loss is the model's ``objective`` (`tf_simclr.objectives`): one given as ``objective=``,
    or the one ``train_mode`` chooses, built from the objective settings passed as keywords
    (``temperature``, ``hidden_norm``, ``loss_scale``, ``head_weight_decay``,
    ``distill_temperature``, ``distill_alpha``; see OBJECTIVE_SETTINGS). The other arguments
    describe the network.
    """

    def __init__(
        self,
        encoder,
        *,
        num_classes: int | None,
        proj_head_mode: str = "nonlinear",
        proj_out_dim: int = 128,
        num_proj_layers: int = DEFAULT_NUM_PROJ_LAYERS,
        ft_proj_selector: int = 0,
        train_mode: str = "pretrain",
        lineareval_while_pretraining: bool = True,
        global_bn: bool = False,
        batch_norm_decay: float = 0.9,
        batch_norm_epsilon: float = 1e-5,
        fine_tune_after_block: int = -1,
        zero_init_logits_layer: bool = False,
        sup_head_input_norm: bool = True,
        fused_batch_norm: bool = True,
        ft_update_unused_head_bn: bool = False,
        objective=None,
        name: str = "simclr",
        **kwargs,
    ):
        objective_settings = {k: kwargs.pop(k) for k in OBJECTIVE_SETTINGS if k in kwargs}
        super().__init__(name=name, **kwargs)
        _check_train_mode(train_mode, num_classes, fine_tune_after_block)
        # Not Keras-tracked: the objective holds settings, no weights.
        object.__setattr__(
            self, "objective", _choose_objective(train_mode, objective, objective_settings)
        )
        # The network's settings, for get_config (the encoder is serialised separately).
        object.__setattr__(
            self,
            "_init_config",
            dict(
                num_classes=num_classes,
                proj_head_mode=proj_head_mode,
                proj_out_dim=proj_out_dim,
                num_proj_layers=num_proj_layers,
                ft_proj_selector=ft_proj_selector,
                train_mode=train_mode,
                lineareval_while_pretraining=lineareval_while_pretraining,
                global_bn=global_bn,
                batch_norm_decay=batch_norm_decay,
                batch_norm_epsilon=batch_norm_epsilon,
                fine_tune_after_block=fine_tune_after_block,
                zero_init_logits_layer=zero_init_logits_layer,
                sup_head_input_norm=sup_head_input_norm,
                fused_batch_norm=fused_batch_norm,
                ft_update_unused_head_bn=ft_update_unused_head_bn,
            ),
        )
        for setting in _ATTRIBUTES:
            setattr(self, setting, self._init_config[setting])
        self.encoder = encoder
        self.projection_head = ProjectionHead(
            proj_head_mode,
            proj_out_dim=proj_out_dim,
            num_proj_layers=num_proj_layers,
            batch_norm_decay=batch_norm_decay,
            batch_norm_epsilon=batch_norm_epsilon,
            global_bn=global_bn,
            fused_batch_norm=fused_batch_norm,
            name="projection_head",
        )
        _check_ft_proj_selector(ft_proj_selector, self.projection_head)
        self._build_supervised_head(**self._init_config)
        # Not Keras-tracked: these layers are already tracked through encoder / heads.
        object.__setattr__(
            self, "_frozen_layers", _frozen_layers(encoder, train_mode, fine_tune_after_block)
        )
        names = ("loss", *self.objective.metric_names_all)
        if "sup_loss" not in names:  # test_step's labelled evaluation batches
            names += ("sup_loss", "sup_acc")
        self._trackers = {n: keras.metrics.Mean(name=n) for n in names}

    def _build_supervised_head(
        self,
        *,
        num_classes,
        train_mode,
        lineareval_while_pretraining,
        zero_init_logits_layer,
        sup_head_input_norm,
        batch_norm_decay,
        batch_norm_epsilon,
        global_bn,
        **_,
    ) -> None:
        """The supervised head (fine-tuning, distillation, or the online linear probe of
        pretraining) and, for the probe, the normalisation of its input."""
        self.supervised_head = None
        self.supervised_head_norm = None
        supervised = train_mode in SUPERVISED_TRAIN_MODES
        if not num_classes or not (supervised or lineareval_while_pretraining):
            return
        self.supervised_head = keras.layers.Dense(
            num_classes,
            use_bias=True,
            kernel_initializer=(
                "zeros" if zero_init_logits_layer else keras.initializers.RandomNormal(stddev=0.01)
            ),
            name=SUPERVISED_HEAD_NAME,
        )
        # Linear eval while pretraining: a batch norm without scale/offset standardises the frozen
        # features the head sees. Without it the head (trained at the contrastive learning rate,
        # which can be ~1) diverges on unnormalised ReLU features; with it, it is still a linear
        # probe (the normalisation is an affine map fixed at inference).
        if train_mode == "pretrain" and sup_head_input_norm:
            self.supervised_head_norm = keras.layers.BatchNormalization(
                center=False,
                scale=False,
                momentum=batch_norm_decay,
                epsilon=batch_norm_epsilon,
                synchronized=global_bn,
                name=SUPERVISED_HEAD_NAME + "_input_norm",
            )

    # ------------------------------------------------------------------ forward
    def _encode(self, images, training):
        out = self.encoder(images, training=training)
        if isinstance(out, dict):
            if "final_avg_pool" not in out:
                raise ValueError(
                    "An encoder returning a dict must include 'final_avg_pool' ([B, D] features); "
                    f"got keys {sorted(out)}."
                )
            return dict(out)
        if isinstance(out, (list, tuple)):
            raise ValueError(
                "The encoder must return one tensor ([B, D] or [B, H, W, C]) or a dict with "
                f"'final_avg_pool'; got a {type(out).__name__} of {len(out)} tensors."
            )
        rank = len(out.shape)
        if rank == 4:
            return {"encoder_output": out, "final_avg_pool": ops.mean(out, axis=(1, 2))}
        if rank == 2:
            return {"final_avg_pool": out}
        raise ValueError(
            f"Encoder output must be [B, D] or [B, H, W, C]; got shape {tuple(out.shape)}."
        )

    def build(self, input_shape):
        # Build the heads from a symbolic pass so variables exist before the first real step.
        if not self.projection_head.built:
            x = keras.KerasTensor(tuple(input_shape))
            h = self._encode(x, training=False)["final_avg_pool"]
            dims = [int(h.shape[-1])]
            self.projection_head.build((None, dims[0]))
            for d in self.projection_head.dense_layers:
                dims.append(d.units)
            if self.supervised_head is not None and not self.supervised_head.built:
                self.supervised_head.build((None, dims[self.ft_proj_selector]))
            if self.supervised_head_norm is not None and not self.supervised_head_norm.built:
                self.supervised_head_norm.build((None, dims[self.ft_proj_selector]))
        self._freeze_unused_head_layers()
        self.built = True

    def _unused_head_layers(self) -> list:
        """Fine-tuning: the projection-head layers above ft_proj_selector (no gradient reaches
        them: the supervised head sits below)."""
        if self.train_mode not in SUPERVISED_TRAIN_MODES:
            return []
        head = self.projection_head
        return [
            layer
            for j in range(self.ft_proj_selector, head.num_layers)
            for layer in (head.dense_layers[j], head.bn_layers[j])
        ]

    def _freeze_unused_head_layers(self):
        for layer in self._unused_head_layers():
            if self.ft_update_unused_head_bn and layer in self.projection_head.bn_layers:
                # The reference keeps these in training mode: their moving statistics follow
                # the batches although no gradient reaches them.
                continue
            if layer.trainable:
                layer.trainable = False
                self._frozen_layers.append(layer)

    def call(self, images, training=False):
        checkable = getattr(images, "dtype", None) not in (tf.float16, tf.bfloat16)
        if checkable and not isinstance(images, keras.KerasTensor) and not _on_tpu():
            # (Under a mixed policy Keras has already cast the images to half precision.)
            # A wrong dtype, layout or value range names the argument instead of failing deep
            # in the network (or silently computing features of out-of-range pixels).
            images = validation.check_images(images, name="images")
            if images.dtype == tf.uint8:
                images = tf.cast(images, tf.float32) / 255.0
        outs = self._encode(images, training=training)
        hiddens = self.projection_head(outs["final_avg_pool"], training=training)
        outs["proj_head_input"] = hiddens[0]
        outs["proj_head_output"] = hiddens[-1]
        if self.supervised_head is not None:
            sup_in = hiddens[self.ft_proj_selector]
            if self.train_mode == "pretrain":
                sup_in = ops.stop_gradient(sup_in)
            if self.supervised_head_norm is not None:
                sup_in = self.supervised_head_norm(sup_in, training=training)
            outs["logits_sup"] = self.supervised_head(sup_in)
        return outs

    def forward_two_views(self, view1, view2, training=True):
        """One pass on concat([view1, view2]) (2B images, BN sees both views); rows [:B] = view1."""
        return self(ops.concatenate([view1, view2], axis=0), training=training)

    # ------------------------------------------------------------ variable sets
    @property
    def has_supervised_head(self) -> bool:
        """Whether ``call`` returns ``logits_sup``."""
        return self.supervised_head is not None

    def zero_supervised_head(self) -> None:
        """Set the supervised head's kernel and bias to zero (e.g. after restoring a checkpoint)."""
        if self.supervised_head is None:
            raise ValueError("This model has no supervised head (num_classes is None).")
        if not self.supervised_head.built:
            raise ValueError("Build the model (call it once) before zeroing its supervised head.")
        for v in self.supervised_head.weights:
            v.assign(ops.zeros(v.shape, v.dtype))

    @property
    def supervised_head_variables(self) -> list:
        """Trainable variables of the supervised (linear-eval / fine-tune) head."""
        return [] if self.supervised_head is None else list(self.supervised_head.trainable_weights)

    @property
    def optimized_variables(self) -> list:
        """The trainable variables a training step updates: all of them but the parameters of
        projection-head layers that no loss reaches (fine-tuning with
        ``ft_update_unused_head_bn``, whose batch norms stay in training mode)."""
        unused = {id(v) for layer in self._unused_head_layers() for v in layer.trainable_weights}
        return [v for v in self.trainable_variables if id(v) not in unused]

    @property
    def backbone_trainable_variables(self) -> list:
        """Trainable variables of encoder + projection head (everything but the supervised head)."""
        return list(self.encoder.trainable_weights) + list(self.projection_head.trainable_weights)

    @property
    def frozen_variables(self) -> list:
        """Parameters frozen by fine-tuning (excludes BN moving statistics)."""
        out, seen = [], set()
        for layer in self._frozen_layers:
            for v in layer.weights:
                if id(v) in seen or "moving_mean" in v.path or "moving_variance" in v.path:
                    continue
                seen.add(id(v))
                out.append(v)
        return out

    # ------------------------------------------------------------------ objective
    def compute_objective(self, data, training: bool = True) -> Objective:
        """The training objective of one batch on this replica: the objective the train mode
        chose (`tf_simclr.objectives`), the single definition used by ``fit()`` and by
        tf_simclr's training loop."""
        return self.objective(self, data, training)

    def objective_metric_names(self) -> tuple[list[str], list[str]]:
        """(names summed over replicas: "loss" and the loss terms, all ending in "loss";
        names averaged over replicas: the rates) of the metrics `compute_objective` reports for
        labelled batches."""
        return self.objective.metric_names(self)

    def training_step(self, data, optimizer, head_optimizer=None) -> Objective:
        """One optimisation step on this replica's batch: the objective's gradient updates
        the network with `optimizer`; with `head_optimizer`, the supervised head is updated by
        it from the supervised loss alone (its input is stop-gradient features)."""
        separate_head = head_optimizer is not None and self.supervised_head is not None
        with tf.GradientTape(persistent=separate_head) as tape:
            objective = self.compute_objective(data, training=True)
            scaled = objective.total
            if hasattr(optimizer, "scale_loss"):
                scaled = optimizer.scale_loss(scaled)
        # Read after the forward pass: under fit() on a model that nothing built yet, the
        # first traced step is what creates the head's variables.
        head_vars = list(self.supervised_head_variables) if separate_head else []
        head_ids = {id(v) for v in head_vars}
        variables = [v for v in self.optimized_variables if id(v) not in head_ids]
        optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables, strict=True))
        if head_vars:
            if not head_optimizer.built:
                # fit() on a model that nothing built yet: created inside the traced step,
                # its slots would break tf.function's rule that variables are created on the
                # first trace only; init_scope creates them outside the trace.
                with tf.init_scope():
                    head_optimizer.build(head_vars)
            head_grads = tape.gradient(objective.shares["sup_loss"], head_vars)
            head_optimizer.apply_gradients(zip(head_grads, head_vars, strict=True))
        if separate_head:
            del tape
        return objective

    def _record(self, objective: Objective):
        replicas = _num_replicas()
        # Trackers average over replicas, so a replica's share is recorded scaled to a full loss.
        for name, value in objective.shares_with_total().items():
            self._trackers[name].update_state(value * replicas)
        for name, value in objective.rates.items():
            self._trackers[name].update_state(value)
        return {name: self._trackers[name].result() for name in objective.metrics()}

    # ------------------------------------------------------------- Keras hooks
    def compile(self, optimizer="rmsprop", *, head_optimizer=None, **kwargs):
        """Keras compile; ``head_optimizer`` trains the supervised (linear-eval) head while
        pretraining: an optimizer, None for the objective's default (the contrastive
        objective's: momentum SGD at learning rate 0.1), or "shared" to train it with
        ``optimizer`` as the reference code does."""
        super().compile(optimizer=optimizer, **kwargs)
        if head_optimizer == "shared" or self.train_mode != "pretrain":
            head_optimizer = None
        elif head_optimizer is None:
            default = getattr(self.objective, "default_head_optimizer", None)
            head_optimizer = default(self) if default is not None else None
        # Not Keras-tracked: the head optimizer's state is not part of the model's weights.
        object.__setattr__(self, "head_optimizer", head_optimizer)

    @property
    def metrics(self):
        return list(self._trackers.values())

    def train_step(self, data):
        optimizer = getattr(self, "optimizer", None)  # (None: compile() was not called)
        objective = self.training_step(data, optimizer, getattr(self, "head_optimizer", None))
        return self._record(objective)

    def test_step(self, data):
        if self.train_mode == "pretrain" and isinstance(data, dict) and "view1" not in data:
            # Plain labelled eval batches: report the supervised head only.
            outs = self(data["image"], training=False)
            if "logits_sup" not in outs:
                raise ValueError(
                    "This model has no supervised head to evaluate on 'image' batches."
                )
            sup = labelled_cross_entropy(outs["logits_sup"], data["label"])
            shares, rates = {"sup_loss": sup.share}, {"sup_acc": sup.accuracy}
            return self._record(Objective(sup.share, shares, rates))
        return self._record(self.compute_objective(data, training=False))

    def get_config(self):
        # The encoder must itself be Keras-serialisable (build_resnet's models are), and so
        # must the objective (the package's are registered).
        return {
            "name": self.name,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            **self._init_config,
            "objective": keras.saving.serialize_keras_object(self.objective),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        if "objective" in config:
            config["objective"] = keras.saving.deserialize_keras_object(config["objective"])
            # Models saved before the objective was always saved also list its settings.
            for setting in OBJECTIVE_SETTINGS:
                config.pop(setting, None)
        return cls(encoder, **config)


def reinitialize(model: keras.Model, seed: int) -> int:
    """Draw every randomly initialised weight of `model` afresh from its own initializer with
    seeds derived from `seed` (deterministic, and without touching the global RNG). Returns the
    number of weights drawn. Constant initializers (batch-norm gammas, biases) are left alone."""
    drawn = 0
    for layer in model._flatten_layers(include_self=True):
        for attr in ("kernel", "bias", "gamma", "beta"):
            weight = getattr(layer, attr, None) if layer.built else None
            init = getattr(layer, f"{attr}_initializer", None)
            if weight is None or init is None or not hasattr(init, "seed"):
                continue
            config = dict(init.get_config(), seed=seed * 1_000_003 + drawn)
            fresh = type(init).from_config(config)
            weight.assign(fresh(tuple(weight.shape), dtype=weight.dtype))
            drawn += 1
    return drawn


def build_model(
    *,
    resnet_depth: int = 50,
    width_multiplier: float = 1.0,
    image_size: int | None = None,
    sk_ratio: float = 0.0,
    se_ratio: float = 0.0,
    cifar_stem: bool | None = None,
    global_bn: bool = False,
    batch_norm_decay: float = 0.9,
    batch_norm_epsilon: float = 1e-5,
    num_classes: int | None = None,
    fused_batch_norm: bool = True,
    **model_kwargs,
) -> SimCLRModel:
    """Build a ResNet encoder (``tf_simclr.network.resnet.build_resnet``) wrapped in a ``SimCLRModel``.

    ``model_kwargs`` go to ``SimCLRModel`` (proj_head_mode, temperature, train_mode, ...).
    With ``image_size`` the variables are created at once.
    """
    from tf_simclr.network.resnet import build_resnet

    shape = (image_size, image_size, 3) if image_size else (None, None, 3)
    encoder = build_resnet(
        resnet_depth,
        width_multiplier,
        input_shape=shape,
        cifar_stem=cifar_stem,
        sk_ratio=sk_ratio,
        se_ratio=se_ratio,
        batch_norm_decay=batch_norm_decay,
        batch_norm_epsilon=batch_norm_epsilon,
        global_bn=global_bn,
        fused_batch_norm=fused_batch_norm,
    )
    model = SimCLRModel(
        encoder,
        num_classes=num_classes,
        global_bn=global_bn,
        batch_norm_decay=batch_norm_decay,
        batch_norm_epsilon=batch_norm_epsilon,
        fused_batch_norm=fused_batch_norm,
        **model_kwargs,
    )
    if image_size:
        model.build((None, image_size, image_size, 3))
    return model
