"""Config validation, derived values, the JSON round trip, and the groups of settings."""

import dataclasses
import json

import pytest

from tf_simclr import config as config_lib
from tf_simclr.config import Config, ConfigError


def test_defaults_are_valid_and_round_trip_through_json(tmp_path):
    config = Config(model_dir=str(tmp_path))
    path = config.save()
    assert json.loads(open(path).read())["resnet_depth"] == 18
    again = Config.load(str(tmp_path))
    assert again == config
    assert again.hash() == config.hash()


def test_hash_ignores_paths_and_mode_but_not_hyperparameters():
    base = Config()
    assert base.replace(model_dir="/elsewhere", mode="eval").hash() == base.hash()
    assert base.replace(temperature=0.2).hash() != base.hash()


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"mode": "fly"}, "--mode"),
        ({"optimizer": "rmsprop"}, "--optimizer"),
        ({"resnet_depth": 20}, "--resnet_depth"),
        ({"temperature": 0.0}, "--temperature"),
        ({"temperature": -1.0}, "--temperature"),
        ({"train_batch_size": 0}, "--train_batch_size"),
        ({"image_size": 4}, "--image_size"),
        ({"train_mode": "finetune", "label_fraction": 1.5}, "--label_fraction"),
        ({"train_mode": "finetune", "label_fraction": 0.0}, "--label_fraction"),
        ({"label_fraction": 0.1}, "--label_fraction"),
        ({"fine_tune_after_block": 2}, "--fine_tune_after_block"),
        ({"num_proj_layers": 1, "ft_proj_selector": 2}, "--ft_proj_selector"),
        ({"strategy": "tpu"}, "--tpu_name"),
        ({"num_cpu_devices": 2}, "--num_cpu_devices"),
        ({"train_epochs": 0, "train_steps": 0}, "--train_steps"),
        ({"learning_rate": float("nan")}, "--learning_rate"),
        ({"momentum": 1.0}, "--momentum"),
    ],
)
def test_invalid_values_name_the_flag(changes, flag):
    with pytest.raises(ConfigError, match=flag):
        Config(**changes)


def test_unknown_keys_are_rejected():
    with pytest.raises(ConfigError, match="Unknown config keys: bogus"):
        Config.from_dict({"bogus": 1})


def test_derived_schedule_values():
    config = Config(train_batch_size=100, train_epochs=3, warmup_epochs=0.5, checkpoint_epochs=2)
    assert config.train_steps_for(1000) == 30  # ceil(3 * 1000 / 100)
    assert config.warmup_steps_for(1000) == 5
    assert config.checkpoint_every_for(1000) == 20
    assert config.replace(train_steps=7).train_steps_for(1000) == 7
    assert config.replace(checkpoint_steps=3).checkpoint_every_for(1000) == 3


def test_augmentation_spec_follows_the_recipe():
    assert Config().augmentation_spec() == "crop,flip,color"
    assert Config(use_blur=True).augmentation_spec() == "crop,flip,color,blur"
    assert Config(augmentations="crop,rotate").augmentation_spec() == "crop,rotate"


def test_use_tpu_selects_the_tpu_strategy():
    assert Config(use_tpu=True, tpu_name="grpc://10.0.0.2:8470").strategy == "tpu"


def test_library_and_cli_share_their_defaults():
    """One default each: the projection head's depth, and LARS's exclusions."""
    import inspect

    from tf_simclr.network import model
    from tf_simclr.training import optim

    for fn in (model.SimCLRModel.__init__, model.ProjectionHead.__init__):
        assert inspect.signature(fn).parameters["num_proj_layers"].default == Config.num_proj_layers
    lars = inspect.signature(optim.LARS.__init__).parameters
    assert lars["exclude_from_weight_decay"].default == optim.DEFAULT_EXCLUDE
    built = optim.build_optimizer("lars", learning_rate=0.1)
    assert built.exclude_from_weight_decay_patterns == optim.DEFAULT_EXCLUDE
    assert built.exclude_from_layer_adaptation_patterns == optim.DEFAULT_EXCLUDE


# ------------------------------------------------------------------------------------------
# The groups of settings (issue 23): what each field declares, and what is read from it
# ------------------------------------------------------------------------------------------

# The hand-kept lists of tf_simclr.config at commit 07f2d01, written out: the lists read from
# the declarations must equal them (field order included).
ENCODER_AT_07F2D01 = (
    "resnet_depth",
    "width_multiplier",
    "sk_ratio",
    "se_ratio",
    "proj_head_mode",
    "proj_out_dim",
    "num_proj_layers",
)
ARCHITECTURE_AT_07F2D01 = (
    "train_mode",
    *ENCODER_AT_07F2D01,
    "ft_proj_selector",
    "lineareval_while_pretraining",
    "num_classes",
    "sup_head_input_norm",
)
RECIPE_AT_07F2D01 = (
    "semi_finetune_epochs",
    "semi_finetune_learning_rate",
    "semi_distill_epochs",
    "semi_finetune_batch_size",
)
# Config.hash's `ignored` set at 07f2d01.
UNHASHED_AT_07F2D01 = {
    "mode",
    "model_dir",
    "eval_timeout",
    "export",
    "summaries",
    "log_every_steps",
    "collective_timeout",
    "neighbour_images",
    "projector_embeddings",
    "data_identity",
    *RECIPE_AT_07F2D01,
}
# --mode=embed's settings, added since: what it writes and where, never part of a run.
EMBED_FIELDS = ("embed_output", "embed_out", "embed_neighbours")
# Training for a time budget, added since: the budget (hashed only when set), the plan it
# records (no flag) and checkpoints by training time (operational).
BUDGET_FIELDS = ("train_minutes", "budget_plan", "checkpoint_minutes")
# The data settings added since (unlabelled training data, labelled evaluation data): part of
# Config.hash only when set, so the hashes above stay.
UNLABELLED_FIELDS = ("unlabelled", "eval_dataset")
# The shuffle buffer's size, a setting since the suite's tiny runs needed a smaller one: part of
# Config.hash only when set, like the two above.
SHUFFLE_FIELDS = ("shuffle_buffer",)


def test_field_lists_are_read_from_the_declarations_and_equal_the_old_lists():
    assert config_lib.ENCODER_FIELDS == ENCODER_AT_07F2D01
    assert config_lib.ARCHITECTURE_FIELDS == ARCHITECTURE_AT_07F2D01
    assert config_lib.RECIPE_FIELDS == RECIPE_AT_07F2D01
    assert config_lib.MODE_DEFAULT_FIELDS == ("learning_rate", "train_epochs")
    assert config_lib._INVOCATION_FIELDS == ("mode", "model_dir", "eval_timeout", *EMBED_FIELDS)
    assert config_lib._RECORD_FIELDS == ("data_identity", "budget_plan")
    assert set(config_lib._UNHASHED_FIELDS) == UNHASHED_AT_07F2D01 | set(EMBED_FIELDS) | {
        "budget_plan",
        "checkpoint_minutes",
    }
    # The hashes of 07f2d01 (a model_dir's config is compared by them).
    assert Config().hash() == "760fa6ce03f7"
    finetune = Config(train_mode="finetune", checkpoint="/p", label_fraction=0.1)
    assert finetune.hash() == "fa0d975910d5"
    # A setting added since changes the hash only when set.
    assert Config(shuffle_buffer=256).hash() != Config().hash()


def test_every_field_is_declared_in_exactly_one_group_with_a_known_role():
    declared = [f.name for group in config_lib.GROUPS.values() for f in dataclasses.fields(group)]
    assert sorted(declared) == sorted(f.name for f in dataclasses.fields(Config))
    assert (
        len(declared)
        == len(set(declared))
        == (
            86
            + len(EMBED_FIELDS)
            + len(BUDGET_FIELDS)
            + len(UNLABELLED_FIELDS)
            + len(SHUFFLE_FIELDS)
        )
    )
    assert [f.name for f in dataclasses.fields(Config)] == declared  # the order of GROUPS
    for field in dataclasses.fields(Config):
        assert field.metadata["role"] in (None, *config_lib.ROLES), field.name
        group = config_lib.group_of(field.name)
        assert field.name in config_lib.GROUPS[group].__dataclass_fields__
    assert config_lib.group_of("temperature") == "optimisation"
    assert config_lib.group_of("resnet_depth") == "model"
    assert config_lib.RECIPE_FIELDS == tuple(
        f.name for f in dataclasses.fields(config_lib.GROUPS["recipe"])
    )


def test_group_views_hold_the_configs_values_and_round_trip():
    config = Config(
        train_mode="finetune",
        checkpoint="/runs/pre",
        label_fraction=0.1,
        resnet_depth=50,
        use_blur=True,
        temperature=0.2,
        knn_k=20,
        seed=3,
        semi_distill_epochs=4,
    )
    views = {name: getattr(config, name) for name in config_lib.GROUPS}
    for name, view in views.items():
        assert type(view) is config_lib.GROUPS[name]
        for field in dataclasses.fields(view):
            assert getattr(view, field.name) == getattr(config, field.name)
    assert views["model"].resnet_depth == 50 and views["optimisation"].temperature == 0.2
    assert views["data"].label_fraction == 0.1 and views["recipe"].semi_distill_epochs == 4
    values = {k: v for view in views.values() for k, v in dataclasses.asdict(view).items()}
    assert Config(**values) == config
    # A group taken from another config: its settings change, the others stay.
    other = Config(resnet_depth=34, width_multiplier=0.5)
    mixed = config.replace(**dataclasses.asdict(other.model))
    assert (mixed.resnet_depth, mixed.width_multiplier) == (34, 0.5)
    assert mixed.temperature == 0.2 and mixed.checkpoint == "/runs/pre"
    # A view is a copy: changing it leaves the config as it was.
    view = config.model
    view.resnet_depth = 101
    assert config.resnet_depth == 50


FLAGS_AT_07F2D01 = {
    "augmentations": ("string", None),
    "batch_norm_decay": ("float", 0.9),
    "brightness": ("string", "multiplicative"),
    "cache_dataset": ("bool", False),
    "checkpoint": ("string", None),
    "checkpoint_epochs": ("int", 10),
    "checkpoint_steps": ("int", 0),
    "collective_timeout": ("int", 600),
    "color_jitter_strength": ("float", None),
    "data_dir": ("string", None),
    "dataset": ("string", "embedded"),
    "deterministic": ("bool", False),
    "distill_alpha": ("float", 0.0),
    "distill_temperature": ("float", 1.0),
    "eval_batch_size": ("int", 256),
    "eval_split": ("string", "test"),
    "eval_steps": ("int", 0),
    "eval_timeout": ("int", 0),
    "export": ("bool", True),
    "fine_tune_after_block": ("int", -1),
    "ft_proj_selector": ("int", 0),
    "ft_update_unused_head_bn": ("bool", False),
    "fused_batch_norm": ("bool", True),
    "gcp_project": ("string", None),
    "global_bn": ("bool", True),
    "hidden_norm": ("bool", True),
    "image_size": ("int", 32),
    "keep_checkpoint_max": ("int", 5),
    "keep_hub_module_max": ("int", 1),
    "knn_eval": ("bool", True),
    "knn_k": ("int", 200),
    "knn_temperature": ("float", 0.1),
    "label_fraction": ("float", None),
    "label_ids_file": ("string", None),
    "learning_rate": ("float", None),
    "learning_rate_scaling": ("string", "linear"),
    "linear_eval": ("bool", True),
    "linear_eval_epochs": ("int", 100),
    "lineareval_while_pretraining": ("bool", True),
    "log_every_steps": ("int", 10),
    "loss_scale": ("string", "paper"),
    "mode": ("string", "train_then_eval"),
    "model_dir": ("string", "/tmp/tf_simclr"),
    "momentum": ("float", 0.9),
    "neighbour_images": ("int", 8),
    "num_classes": ("int", 0),
    "num_cpu_devices": ("int", 0),
    "num_proj_layers": ("int", 2),
    "optimizer": ("string", "lars"),
    "precision": ("string", "auto"),
    "proj_head_mode": ("string", "nonlinear"),
    "proj_out_dim": ("int", 128),
    "projector_embeddings": ("int", 1000),
    "random_init": ("bool", False),
    "random_init_baseline": ("bool", True),
    "resnet_depth": ("int", 18),
    "se_ratio": ("float", 0.0),
    "seed": ("int", 0),
    "semi_distill_epochs": ("int", 0),
    "semi_finetune_batch_size": ("int", 0),
    "semi_finetune_epochs": ("int", 200),
    "semi_finetune_learning_rate": ("float", 0.5),
    "sk_ratio": ("float", 0.0),
    "steps_per_loop": ("int", 10),
    "strategy": ("string", "default"),
    "strict_data": ("bool", False),
    "summaries": ("bool", True),
    "sup_head_input_norm": ("bool", True),
    "sup_head_learning_rate": ("float", 0.1),
    "sup_head_optimizer": ("string", "momentum"),
    "teacher": ("string", None),
    "temperature": ("float", 0.5),
    "tpu_name": ("string", None),
    "tpu_zone": ("string", None),
    "train_batch_size": ("int", 256),
    "train_epochs": ("int", None),
    "train_mode": ("string", "pretrain"),
    "train_split": ("string", "train"),
    "train_steps": ("int", 0),
    "use_blur": ("bool", False),
    "use_tpu": ("bool", False),
    "warmup_epochs": ("float", 2.0),
    "weight_decay": ("float", 0.0001),
    "width_multiplier": ("float", 0.25),
    "zero_init_logits_layer": ("bool", False),
}


def test_flags_keep_their_names_types_and_defaults_and_are_listed_by_group():
    from tf_simclr import cli

    flags = {
        f.name: (cli.FLAGS[f.name].flag_type(), cli.FLAGS[f.name].default)
        for f in dataclasses.fields(Config)
        if config_lib.has_flag(f)
    }
    assert flags == FLAGS_AT_07F2D01 | {
        "embed_output": ("string", "final_avg_pool"),
        "embed_out": ("string", None),
        "embed_neighbours": ("int", 0),
        "train_minutes": ("float", None),
        "checkpoint_minutes": ("float", 0.0),
        "unlabelled": ("bool", False),
        "eval_dataset": ("string", None),
        "shuffle_buffer": ("int", 10_000),
    }
    by_module = cli.FLAGS.flags_by_module_dict()
    data_flags = {f.name for f in by_module["tf_simclr settings: data"]}
    assert set(UNLABELLED_FIELDS) | set(SHUFFLE_FIELDS) <= data_flags
    assert {flag.name for flag in by_module["tf_simclr settings: model"]} == {
        f.name for f in dataclasses.fields(config_lib.ModelSettings)
    }
    assert "data_identity" not in cli.FLAGS  # a record, not a flag
    assert "budget_plan" not in cli.FLAGS


# config.json files as earlier versions wrote them (Config(...).save() run at each commit;
# settings added since are missing from the older ones).
OLD_CONFIG_JSON = {
    # 52a1a69: the first version (68 settings): a pretraining run.
    "52a1a69": """{
    "augmentations": null, "batch_norm_decay": 0.9, "brightness": "multiplicative",
    "cache_dataset": false, "checkpoint": null, "checkpoint_epochs": 10,
    "checkpoint_steps": 0, "color_jitter_strength": 0.5, "data_dir": null,
    "dataset": "embedded", "deterministic": false, "eval_batch_size": 256,
    "eval_split": "test", "eval_steps": 0, "eval_timeout": 0, "export": true,
    "fine_tune_after_block": -1, "ft_proj_selector": 0, "gcp_project": null,
    "global_bn": true, "hidden_norm": true, "image_size": 32, "keep_checkpoint_max": 5,
    "keep_hub_module_max": 1, "knn_eval": true, "knn_k": 200, "knn_temperature": 0.1,
    "label_fraction": null, "label_ids_file": null, "learning_rate": 1.0,
    "learning_rate_scaling": "linear", "linear_eval": true, "linear_eval_epochs": 100,
    "lineareval_while_pretraining": true, "log_every_steps": 10, "loss_scale": "paper",
    "mode": "train_then_eval", "model_dir": "/runs/pretrain", "momentum": 0.9,
    "num_cpu_devices": 0, "num_proj_layers": 2, "optimizer": "lars", "precision": "float32",
    "proj_head_mode": "nonlinear", "proj_out_dim": 128, "random_init_baseline": true,
    "resnet_depth": 18, "se_ratio": 0.0, "seed": 0, "sk_ratio": 0.0, "steps_per_loop": 10,
    "strategy": "default", "strict_data": false, "summaries": true, "temperature": 0.5,
    "tpu_name": null, "tpu_zone": null, "train_batch_size": 256, "train_epochs": 40,
    "train_mode": "pretrain", "train_split": "train", "train_steps": 0, "use_blur": false,
    "use_tpu": false, "warmup_epochs": 2.0, "weight_decay": 0.0001, "width_multiplier": 0.25,
    "zero_init_logits_layer": false
    }""",
    # 2cf8d31: before the reference-parity settings: a fine-tuning run.
    "2cf8d31": """{
    "augmentations": null, "batch_norm_decay": 0.9, "brightness": "multiplicative",
    "cache_dataset": false, "checkpoint": "/runs/pretrain", "checkpoint_epochs": 10,
    "checkpoint_steps": 0, "collective_timeout": 600, "color_jitter_strength": 1.0,
    "data_dir": null, "dataset": "embedded", "deterministic": false, "eval_batch_size": 256,
    "eval_split": "test", "eval_steps": 0, "eval_timeout": 0, "export": true,
    "fine_tune_after_block": -1, "ft_proj_selector": 0, "gcp_project": null,
    "global_bn": true, "hidden_norm": true, "image_size": 32, "keep_checkpoint_max": 5,
    "keep_hub_module_max": 1, "knn_eval": true, "knn_k": 200, "knn_temperature": 0.1,
    "label_fraction": 0.1, "label_ids_file": null, "learning_rate": 0.1,
    "learning_rate_scaling": "linear", "linear_eval": true, "linear_eval_epochs": 100,
    "lineareval_while_pretraining": true, "log_every_steps": 10, "loss_scale": "paper",
    "mode": "train_then_eval", "model_dir": "/runs/finetune", "momentum": 0.9,
    "num_cpu_devices": 0, "num_proj_layers": 2, "optimizer": "lars", "precision": "float32",
    "proj_head_mode": "nonlinear", "proj_out_dim": 128, "random_init_baseline": true,
    "resnet_depth": 18, "se_ratio": 0.0, "seed": 0, "sk_ratio": 0.0, "steps_per_loop": 10,
    "strategy": "default", "strict_data": false, "summaries": true,
    "sup_head_learning_rate": 0.1, "temperature": 0.5, "tpu_name": null, "tpu_zone": null,
    "train_batch_size": 256, "train_epochs": 12, "train_mode": "finetune",
    "train_split": "train", "train_steps": 0, "use_blur": false, "use_tpu": false,
    "warmup_epochs": 2.0, "weight_decay": 0.0001, "width_multiplier": 0.25,
    "zero_init_logits_layer": false
    }""",
    # 385c9cf: with the parity settings: a converted reference model.
    "385c9cf": """{
    "augmentations": null, "batch_norm_decay": 0.9, "brightness": "multiplicative",
    "cache_dataset": false, "checkpoint": null, "checkpoint_epochs": 10,
    "checkpoint_steps": 0, "collective_timeout": 600, "color_jitter_strength": 1.0,
    "data_dir": null, "dataset": "imagenet2012", "deterministic": false,
    "eval_batch_size": 256, "eval_split": "test", "eval_steps": 0, "eval_timeout": 0,
    "export": true, "fine_tune_after_block": -1, "ft_proj_selector": 0,
    "ft_update_unused_head_bn": true, "fused_batch_norm": false, "gcp_project": null,
    "global_bn": true, "hidden_norm": true, "image_size": 224, "keep_checkpoint_max": 5,
    "keep_hub_module_max": 1, "knn_eval": true, "knn_k": 200, "knn_temperature": 0.1,
    "label_fraction": null, "label_ids_file": null, "learning_rate": 4.0,
    "learning_rate_scaling": "linear", "linear_eval": true, "linear_eval_epochs": 100,
    "lineareval_while_pretraining": true, "log_every_steps": 10, "loss_scale": "reference",
    "mode": "eval", "model_dir": "/runs/r50_sk1", "momentum": 0.9, "num_classes": 1000,
    "num_cpu_devices": 0, "num_proj_layers": 3, "optimizer": "lars", "precision": "float32",
    "proj_head_mode": "nonlinear", "proj_out_dim": 128, "random_init_baseline": true,
    "resnet_depth": 50, "se_ratio": 0.0, "seed": 0, "sk_ratio": 0.0625, "steps_per_loop": 10,
    "strategy": "default", "strict_data": false, "summaries": true,
    "sup_head_input_norm": false, "sup_head_learning_rate": 0.1,
    "sup_head_optimizer": "shared", "temperature": 0.5, "tpu_name": null, "tpu_zone": null,
    "train_batch_size": 256, "train_epochs": 12, "train_mode": "finetune",
    "train_split": "train", "train_steps": 0, "use_blur": false, "use_tpu": false,
    "warmup_epochs": 2.0, "weight_decay": 0.0001, "width_multiplier": 1.0,
    "zero_init_logits_layer": false
    }""",
    # 29293a4: with distillation, before data_identity: a distillation run.
    "29293a4": """{
    "augmentations": null, "batch_norm_decay": 0.9, "brightness": "multiplicative",
    "cache_dataset": false, "checkpoint": null, "checkpoint_epochs": 10,
    "checkpoint_steps": 0, "collective_timeout": 600, "color_jitter_strength": null,
    "data_dir": null, "dataset": "embedded", "deterministic": false, "distill_alpha": 0.5,
    "distill_temperature": 1.0, "eval_batch_size": 256, "eval_split": "test",
    "eval_steps": 0, "eval_timeout": 0, "export": true, "fine_tune_after_block": -1,
    "ft_proj_selector": 0, "ft_update_unused_head_bn": false, "fused_batch_norm": true,
    "gcp_project": null, "global_bn": true, "hidden_norm": true, "image_size": 32,
    "keep_checkpoint_max": 5, "keep_hub_module_max": 1, "knn_eval": true, "knn_k": 200,
    "knn_temperature": 0.1, "label_fraction": 0.1, "label_ids_file": null,
    "learning_rate": 4.0, "learning_rate_scaling": "linear", "linear_eval": true,
    "linear_eval_epochs": 100, "lineareval_while_pretraining": true, "log_every_steps": 10,
    "loss_scale": "paper", "mode": "train_then_eval", "model_dir": "/runs/student",
    "momentum": 0.9, "neighbour_images": 8, "num_classes": 0, "num_cpu_devices": 0,
    "num_proj_layers": 2, "optimizer": "lars", "precision": "auto",
    "proj_head_mode": "nonlinear", "proj_out_dim": 128, "projector_embeddings": 1000,
    "random_init": false, "random_init_baseline": true, "resnet_depth": 18, "se_ratio": 0.0,
    "seed": 0, "semi_distill_epochs": 0, "semi_finetune_epochs": 200,
    "semi_finetune_learning_rate": 0.5, "sk_ratio": 0.0, "steps_per_loop": 10,
    "strategy": "default", "strict_data": false, "summaries": true,
    "sup_head_input_norm": true, "sup_head_learning_rate": 0.1,
    "sup_head_optimizer": "momentum", "teacher": "/runs/finetune", "temperature": 0.5,
    "tpu_name": null, "tpu_zone": null, "train_batch_size": 256, "train_epochs": 12,
    "train_mode": "distill", "train_split": "train", "train_steps": 0, "use_blur": false,
    "use_tpu": false, "warmup_epochs": 2.0, "weight_decay": 0.0001, "width_multiplier": 0.25,
    "zero_init_logits_layer": false
    }""",
    # d2e0f53: with data_identity: a fine-tuning run on the embedded dataset.
    "d2e0f53": """{
    "augmentations": null, "batch_norm_decay": 0.9, "brightness": "multiplicative",
    "cache_dataset": false, "checkpoint": "/runs/pretrain", "checkpoint_epochs": 10,
    "checkpoint_steps": 0, "collective_timeout": 600, "color_jitter_strength": null,
    "data_dir": null,
    "data_identity": {"class_names": ["disk", "ring", "square", "triangle", "plus", "star",
      "arrow", "crescent", "bars", "corner"],
      "data_dir": "/home/user/tf_simclr/tf_simclr/data/embedded/shapes10/1.0.0",
      "dataset": "embedded", "fingerprint": "2608ff456a4b738e", "kind": "embedded",
      "num_examples": 5000, "split": "train", "version": "1.0.0"},
    "dataset": "embedded", "deterministic": false, "distill_alpha": 0.0,
    "distill_temperature": 1.0, "eval_batch_size": 256, "eval_split": "test",
    "eval_steps": 0, "eval_timeout": 0, "export": true, "fine_tune_after_block": -1,
    "ft_proj_selector": 0, "ft_update_unused_head_bn": false, "fused_batch_norm": true,
    "gcp_project": null, "global_bn": true, "hidden_norm": true, "image_size": 32,
    "keep_checkpoint_max": 5, "keep_hub_module_max": 1, "knn_eval": true, "knn_k": 200,
    "knn_temperature": 0.1, "label_fraction": 0.1, "label_ids_file": null,
    "learning_rate": 0.1, "learning_rate_scaling": "linear", "linear_eval": true,
    "linear_eval_epochs": 100, "lineareval_while_pretraining": true, "log_every_steps": 10,
    "loss_scale": "paper", "mode": "train_then_eval", "model_dir": "/runs/finetune",
    "momentum": 0.9, "neighbour_images": 8, "num_classes": 0, "num_cpu_devices": 0,
    "num_proj_layers": 2, "optimizer": "lars", "precision": "auto",
    "proj_head_mode": "nonlinear", "proj_out_dim": 128, "projector_embeddings": 1000,
    "random_init": false, "random_init_baseline": true, "resnet_depth": 18, "se_ratio": 0.0,
    "seed": 0, "semi_distill_epochs": 0, "semi_finetune_batch_size": 0,
    "semi_finetune_epochs": 200, "semi_finetune_learning_rate": 0.5, "sk_ratio": 0.0,
    "steps_per_loop": 10, "strategy": "default", "strict_data": false, "summaries": true,
    "sup_head_input_norm": true, "sup_head_learning_rate": 0.1,
    "sup_head_optimizer": "momentum", "teacher": null, "temperature": 0.5, "tpu_name": null,
    "tpu_zone": null, "train_batch_size": 256, "train_epochs": 200, "train_mode": "finetune",
    "train_split": "train", "train_steps": 0, "use_blur": false, "use_tpu": false,
    "warmup_epochs": 2.0, "weight_decay": 0.0001, "width_multiplier": 0.25,
    "zero_init_logits_layer": false
    }""",
}
# What a file that lacks a setting gets: the value the versions before it behaved as.
DEFAULTS_OF_LATER_SETTINGS = {
    "shuffle_buffer": 10_000,
    "collective_timeout": 600,
    "sup_head_learning_rate": 0.1,
    "sup_head_optimizer": "momentum",
    "sup_head_input_norm": True,
    "ft_update_unused_head_bn": False,
    "fused_batch_norm": True,
    "num_classes": 0,
    "neighbour_images": 8,
    "projector_embeddings": 1000,
    "teacher": None,
    "random_init": False,
    "distill_temperature": 1.0,
    "distill_alpha": 0.0,
    "semi_finetune_epochs": 200,
    "semi_finetune_learning_rate": 0.5,
    "semi_distill_epochs": 0,
    "semi_finetune_batch_size": 0,
    "data_identity": None,
    "embed_output": "final_avg_pool",
    "embed_out": None,
    "embed_neighbours": 0,
    "train_minutes": None,
    "budget_plan": None,
    "checkpoint_minutes": 0.0,
    "unlabelled": False,
    "eval_dataset": None,
}


@pytest.mark.parametrize("commit", sorted(OLD_CONFIG_JSON))
def test_config_json_of_earlier_versions_loads(tmp_path, commit):
    text = OLD_CONFIG_JSON[commit]
    (tmp_path / "config.json").write_text(text)
    config = Config.load(str(tmp_path))
    saved = json.loads(text)
    assert {name: getattr(config, name) for name in saved} == saved  # kept as they ran
    missing = {f.name for f in dataclasses.fields(Config)} - set(saved)
    assert {name: getattr(config, name) for name in missing} == {
        name: DEFAULTS_OF_LATER_SETTINGS[name] for name in missing
    }
    assert config.mode_defaulted == ()  # the recorded schedule, not the mode's defaults
    again = Config.from_json(config.to_json())
    assert again == config


def test_the_oldest_config_json_keeps_its_values():
    config = Config.from_json(OLD_CONFIG_JSON["52a1a69"])
    assert (config.learning_rate, config.train_epochs) == (1.0, 40)
    assert (config.color_jitter_strength, config.precision) == (0.5, "float32")
    converted = Config.from_json(OLD_CONFIG_JSON["385c9cf"])
    assert converted.model.resnet_depth == 50 and converted.model.sk_ratio == 0.0625
    assert converted.sup_head_optimizer == "shared" and converted.num_classes == 1000
    recent = Config.from_json(OLD_CONFIG_JSON["d2e0f53"])
    assert recent.data_identity["num_examples"] == 5000
    assert (recent.learning_rate, recent.train_epochs) == (0.1, 200)


def test_an_empty_optional_string_flag_means_none():
    """--data_dir=, --checkpoint=, --teacher=, ...: every `str | None` setting, read from the
    field's type."""
    from tf_simclr import cli

    cli.FLAGS(["tf-simclr", "--teacher=", "--checkpoint=", "--tpu_zone=", "--dataset=x"])
    try:
        given = cli._given_flags()
    finally:
        cli.FLAGS.unparse_flags()
    assert given == {"teacher": None, "checkpoint": None, "tpu_zone": None, "dataset": "x"}


@pytest.mark.parametrize(
    "group, changes, message",
    [
        ("run", dict(teacher="/t"), "--teacher only applies to --train_mode=distill"),
        ("data", dict(label_fraction=0.1), "--label_fraction/--label_ids_file only apply"),
        ("data", dict(shuffle_buffer=0), "--shuffle_buffer must be a positive number, got 0"),
        ("augmentation", dict(use_blur=True, augmentations="crop"), "add 'blur'"),
        ("model", dict(fine_tune_after_block=5), "--fine_tune_after_block must be in"),
        ("optimisation", dict(momentum=1.0), "--momentum must be in"),
        ("evaluation", dict(knn_k=0), "--knn_k must be a positive number"),
        ("runtime", dict(num_cpu_devices=2), "--num_cpu_devices only applies"),
        ("recipe", dict(mode="semi_supervised"), "needs the labelled subset"),
    ],
)
def test_each_rule_is_checked_by_its_groups_check(group, changes, message):
    """A rule lives in the check of the group whose flag it names (config_checks)."""
    from tf_simclr import config_checks

    config = Config()
    for name, value in changes.items():
        setattr(config, name, value)  # past validation, to call each group's check alone
    for other in config_lib.GROUPS:
        check = getattr(config_checks, f"_check_{other}")
        if other == group:
            with pytest.raises(ConfigError, match=message):
                check(config)
        else:
            check(config)


# ------------------------------------------------------------------------------------------
# Unlabelled training data and a labelled evaluation dataset
# ------------------------------------------------------------------------------------------
def test_unlabelled_switches_the_online_head_off_and_both_settings_are_part_of_the_hash():
    unlabelled = Config(unlabelled=True, mode="train")
    assert unlabelled.lineareval_while_pretraining is False
    assert Config(mode="train").lineareval_while_pretraining is True
    base = Config(mode="train").hash()
    assert unlabelled.hash() != base
    with_eval = Config(mode="train", eval_dataset="/data/labelled")
    assert with_eval.hash() != base
    assert with_eval.replace(eval_dataset="/data/other").hash() != with_eval.hash()
    # At their defaults they leave the hash as it was before they existed (pinned above).
    assert Config().hash() == "760fa6ce03f7"
    assert Config.from_json(unlabelled.to_json()) == unlabelled


def test_unlabelled_and_eval_dataset_flags_reach_the_config():
    from helpers.cli import config_from_argv

    config = config_from_argv("--mode=train", "--unlabelled", "--eval_dataset=/data/colours")
    assert (config.unlabelled, config.eval_dataset) == (True, "/data/colours")
    assert config.lineareval_while_pretraining is False


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            dict(unlabelled=True),  # --mode=train_then_eval, the default
            r"--mode=train_then_eval evaluates .* need labels.*Add --eval_dataset=<labelled "
            r"data>.*or use --mode=train",
        ),
        (
            dict(unlabelled=True, mode="eval"),
            r"--mode=eval evaluates .*Add --eval_dataset=.*or use --mode=train",
        ),
        (
            dict(unlabelled=True, mode="train", train_mode="finetune", checkpoint="/p"),
            r"--unlabelled says the training data has no labels, but --train_mode=finetune "
            r"trains on labels",
        ),
        (
            dict(unlabelled=True, mode="semi_supervised", label_fraction=0.1),
            r"--mode=semi_supervised fine-tunes on labels",
        ),
        (
            dict(eval_dataset="/l", mode="train", train_mode="finetune", checkpoint="/p"),
            r"--eval_dataset gives the kNN and linear probe of pretraining",
        ),
        (
            dict(eval_dataset="/l", mode="eval", checkpoint="/p"),
            r"give the labelled data as --dataset=/l and drop --eval_dataset",
        ),
        (
            dict(eval_dataset="/l", eval_split="train"),
            r"--eval_split='train' is the training split of --eval_dataset",
        ),
        (dict(eval_dataset=" "), r"--eval_dataset is empty"),
    ],
    ids=[
        "unlabelled-train-then-eval",
        "unlabelled-eval",
        "unlabelled-finetune",
        "unlabelled-semi-supervised",
        "eval-dataset-finetune",
        "eval-dataset-transfer",
        "eval-dataset-train-split",
        "eval-dataset-empty",
    ],
)
def test_unlabelled_and_eval_dataset_usage_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        Config(**changes)


def test_unlabelled_with_an_eval_dataset_or_mode_train_is_valid():
    Config(unlabelled=True, eval_dataset="/l")  # train_then_eval
    Config(unlabelled=True, mode="eval", eval_dataset="/l")
    Config(unlabelled=True, mode="train")
    Config(unlabelled=True, mode="preview")
    # The fit split is --eval_dataset's "train": training on a split named "test" is fine.
    Config(eval_dataset="/l", train_split="test", eval_split="test")
