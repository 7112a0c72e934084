"""Config validation, derived values and the JSON round trip."""

import json

import pytest

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
