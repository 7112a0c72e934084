"""Named recipes (--recipe=NAME): flag files shipped in tf_simclr/recipes/, read by the command
line where --recipe stands, as --flagfile would read them."""

import os
import subprocess
import sys

import pytest

from tf_simclr import cli
from tf_simclr.choices import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEARNING_RATE_10MIN = 4.0


def _config(argv):
    cli.FLAGS(cli.expand_recipes(["tf-simclr", *argv]))
    try:
        return cli.config_from_flags()
    finally:
        cli.FLAGS.unparse_flags()


def _recipe_lines(name):
    """The flags a recipe file holds, read here without absl (comments and blanks skipped)."""
    with open(os.path.join(ROOT, "tf_simclr", "recipes", f"{name}.flags"), encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [line for line in lines if line and not line.startswith("#")]


def test_a_recipe_gives_the_config_of_its_flags(tmp_path):
    model_dir = f"--model_dir={tmp_path}"
    from_recipe = _config(["--recipe=cifar10_paper", model_dir])
    assert from_recipe == _config([*_recipe_lines("cifar10_paper"), model_dir])
    # The paper's CIFAR-10 settings (ResNet-18 at width 0.5 and batch 256 on a CPU), written out.
    paper = dict(
        resnet_depth=18,
        width_multiplier=0.5,
        image_size=32,
        train_batch_size=256,
        optimizer="lars",
        learning_rate=1.0,
        learning_rate_scaling="linear",
        weight_decay=1e-4,
        temperature=0.5,
        color_jitter_strength=0.5,
        use_blur=False,
    )
    assert {name: getattr(from_recipe, name) for name in paper} == paper
    assert cli.available_recipes() == ["cifar10_10min", "cifar10_paper"]


def test_the_ten_minute_recipe_is_the_paper_recipe_narrower_cooler_and_faster(tmp_path):
    """cifar10_10min differs from cifar10_paper in the three settings the 10-minute study
    chose (README, "Time to accuracy") and in nothing else."""
    model_dir = f"--model_dir={tmp_path}"
    short = _config(["--recipe=cifar10_10min", model_dir])
    assert short == _config([*_recipe_lines("cifar10_10min"), model_dir])
    paper = _config(["--recipe=cifar10_paper", model_dir])
    changed = {
        name: (getattr(paper, name), getattr(short, name))
        for name in paper.to_dict()
        if getattr(paper, name) != getattr(short, name)
    }
    assert changed == {
        "width_multiplier": (0.5, 0.125),
        "temperature": (0.5, 0.2),
        "learning_rate": (1.0, LEARNING_RATE_10MIN),
    }


def test_flags_after_the_recipe_override_it_and_flags_before_it_do_not(tmp_path):
    model_dir = f"--model_dir={tmp_path}"
    after = _config(["--recipe", "cifar10_paper", "--temperature=0.2", model_dir])
    assert (after.temperature, after.width_multiplier) == (0.2, 0.5)
    before = _config(["--temperature=0.2", "--recipe=cifar10_paper", model_dir])
    assert before.temperature == 0.5
    # Recipes hold no length: a time budget goes with them.
    timed = _config(["--recipe=cifar10_paper", "--train_minutes=30", model_dir])
    assert timed.train_minutes == 30 and timed.train_epochs is None


def test_an_unknown_recipe_lists_the_available_ones():
    with pytest.raises(ConfigError, match="--recipe='cifar' is not a recipe of tf_simclr; "):
        cli.expand_recipes(["tf-simclr", "--recipe=cifar"])
    with pytest.raises(ConfigError, match="available: cifar10_10min, cifar10_paper"):
        cli.expand_recipes(["tf-simclr", "--recipe"])
    assert cli.expand_recipes(["tf-simclr", "--", "--recipe=x"]) == [
        "tf-simclr",
        "--",
        "--recipe=x",
    ]
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run.py"), "--recipe=nope"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert (
        "--recipe='nope' is not a recipe of tf_simclr; available: cifar10_10min, cifar10_paper"
        in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_a_recipe_inside_a_flagfile_is_refused_with_its_path(tmp_path):
    flagfile = tmp_path / "run.flags"
    flagfile.write_text("--recipe=cifar10_paper\n")
    with pytest.raises(ConfigError, match="on the command line only") as err:
        _config([f"--flagfile={flagfile}", f"--model_dir={tmp_path}"])
    assert os.path.join("tf_simclr", "recipes", "cifar10_paper.flags") in str(err.value)
