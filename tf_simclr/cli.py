"""The tf_simclr command line: absl flags -> Config -> tf_simclr.workflows.runner.run -> a results table.

    tf-simclr --mode=train_then_eval            # the embedded default dataset, a few minutes
    tf-simclr --helpfull                        # every flag
    tf-simclr --flagfile=my_run.flags           # flags read from a file
    tf-simclr --recipe=cifar10_paper --dataset=cifar10 --train_minutes=30   # a shipped recipe

`python -m tf_simclr` and, in a checkout, `python run.py` are the same command. Importing this
module defines one absl flag per Config field (in absl's global FLAGS); the rest of the library
never imports it and never reads flags: everything it needs arrives in the Config.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import signal
import sys
import threading
import typing

from absl import app, flags
from absl import logging as absl_logging

from tf_simclr.config import (
    CONFIG_FILENAME,
    Config,
    ConfigError,
    describe_mode_defaults,
    group_of,
    has_flag,
    help_text,
    resolve,
    with_encoder_of_checkpoint,
)

log = logging.getLogger(__name__)


_DEFINE = {
    bool: flags.DEFINE_bool,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    str: flags.DEFINE_string,
}


def _flag_type(name: str) -> tuple[type, bool]:
    """The flag type of a Config field (its type without `| None`) and whether None is one
    of its values."""
    hint = typing.get_type_hints(Config)[name]
    kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)]
    return (kinds[0], True) if kinds else (hint, False)


def _define_flags() -> None:
    """One absl flag per Config field, with the field's help (tf_simclr.config); --helpfull
    lists them by group."""
    for field in filter(has_flag, dataclasses.fields(Config)):
        kind, _ = _flag_type(field.name)
        _DEFINE[kind](
            field.name,
            field.default,
            help_text(field),
            module_name=f"tf_simclr settings: {group_of(field.name)}",
        )


_define_flags()
FLAGS = flags.FLAGS

# Named recipes: flag files shipped inside the package (tf_simclr/recipes/NAME.flags).
RECIPES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")
_RECIPE_SUFFIX = ".flags"


def available_recipes() -> list[str]:
    """The names --recipe accepts (the recipe files shipped in tf_simclr/recipes/)."""
    try:
        names = os.listdir(RECIPES_DIR)
    except OSError:
        return []
    return sorted(n[: -len(_RECIPE_SUFFIX)] for n in names if n.endswith(_RECIPE_SUFFIX))


flags.DEFINE_string(
    "recipe",
    None,
    "A named set of flags shipped with tf_simclr (tf_simclr/recipes/NAME.flags), read where "
    "it stands as --flagfile=<its file> would be: flags after it override it. On the command "
    "line only (not in a --flagfile). cifar10_paper: the SimCLR paper's CIFAR-10 settings; "
    "cifar10_10min: the settings that learned most in 10 minutes on a 2-core CPU. "
    f"One of: {', '.join(available_recipes()) or 'none installed'}.",
    module_name="tf_simclr settings: run",
)


def recipe_path(name: str) -> str:
    """The flag file of recipe `name`; ConfigError listing the recipes when there is none."""
    names = available_recipes()
    if name not in names:
        raise ConfigError(
            f"--recipe={name!r} is not a recipe of tf_simclr; available: "
            f"{', '.join(names) or 'none'}. (For a flag file of your own use --flagfile=PATH.)"
        )
    return os.path.join(RECIPES_DIR, name + _RECIPE_SUFFIX)


def expand_recipes(argv: list[str]) -> list[str]:
    """`argv` with each --recipe=NAME (or --recipe NAME) replaced by --flagfile=<its file>, so
    absl reads the recipe's flags in its place and the flags after it override them."""
    expanded, rest = [], iter(argv)
    for arg in rest:
        name_and_value = arg.lstrip("-") if arg.startswith("-") and arg != "--" else None
        if name_and_value is None or name_and_value.split("=", 1)[0] != "recipe":
            expanded.append(arg)
            if arg == "--":  # what follows is no flag
                expanded.extend(rest)
            continue
        if "=" in name_and_value:
            name = name_and_value.split("=", 1)[1]
        else:
            name = next(rest, "")
        expanded.append(f"--flagfile={recipe_path(name)}")
    return expanded


def parse_command_line(argv: list[str]) -> list[str]:
    """absl's parsing of `argv` (the arguments that are not flags are returned) after
    `expand_recipes`; a usage error (exit code 2) for an unknown recipe."""
    try:
        argv = expand_recipes(argv)
    except ConfigError as err:
        sys.exit(usage_error(str(err)))
    return app.parse_flags_with_usage(argv)


def _given_flags() -> dict:
    """The Config fields set on the command line (or in a --flagfile), with '' as None for the
    optional string settings (--data_dir=, --checkpoint=, ...)."""
    given = {}
    for field in filter(has_flag, dataclasses.fields(Config)):
        if FLAGS[field.name].present:
            value = getattr(FLAGS, field.name)
            kind, optional = _flag_type(field.name)
            given[field.name] = None if optional and kind is str and value == "" else value
    return given


def config_from_flags() -> Config:
    """Turn parsed flags into a validated Config (raises ConfigError).

    Over a model_dir that holds a run (config.json), the run's settings are the base and the
    flags given override them; a given architecture flag that differs is an error. A new run
    with --checkpoint (fine-tuning, or --mode=eval on another dataset) takes the encoder
    settings and image size that model was trained with, unless given.
    """
    if FLAGS["recipe"].present:  # left by absl: it came from a --flagfile (expand_recipes)
        raise ConfigError(
            f"--recipe={FLAGS.recipe} is read on the command line only, not inside a "
            f"--flagfile: there, use --flagfile={os.path.join(RECIPES_DIR, FLAGS.recipe)}"
            f"{_RECIPE_SUFFIX}."
        )
    given = _given_flags()
    model_dir = os.path.expanduser(given.get("model_dir") or Config.model_dir)
    saved = None
    if os.path.isfile(os.path.join(model_dir, CONFIG_FILENAME)):
        saved = Config.load(model_dir)
    elif given.get("checkpoint"):  # fine-tuning or evaluating (transfer) another run's model
        given = with_encoder_of_checkpoint(given)
    return resolve(given, saved, source=f"--model_dir={model_dir}")


def describe_tf_error(err) -> str:
    """The informative part of a TensorFlow error: its cause and the file or op it names,
    without the Python trace of where the op was defined and the internal node markers."""
    kept = []
    for line in str(getattr(err, "message", err)).splitlines():
        text = line.strip()
        if not text or line.startswith((" ", "\t")) or text.startswith("Detected at node"):
            continue  # the definition trace ("  File ...") and node markers ("\t [[...]]")
        if text == "Graph execution error:":
            continue
        text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
        text = re.sub(r"\s*\[Op:[^\]]*\](\s*name:\s*\S*)?\s*$", "", text)
        if text:
            kept.append(text)
    return " ".join(kept) or str(err).strip()


# What TensorFlow's C++ layer prints while it starts, before its logging is configured (so
# TF_CPP_MIN_LOG_LEVEL does not reach it), that says nothing a user can act on.
_STARTUP_NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    # The README says why results depend on the CPU; the notice repeats on every run.
    re.compile(r"^I\d{4} [^\]]*\] oneDNN custom operations are on"),
)
# "No CUDA driver" on a CPU-only machine, and the failed cuInit that follows it. The cuInit
# line alone (a driver that is there but broken) is kept: that is something to fix.
_NO_CUDA_DRIVER = re.compile(r"^I\d{4} [^\]]*\] Could not find cuda drivers on your machine")
_CUINIT_FAILED = re.compile(r"^E\d{4} [^\]]*\] failed call to cuInit")


def filter_startup_noise(lines: typing.Iterable[str]) -> typing.Iterator[str]:
    """The lines of TensorFlow's start-up output a user can act on (see _STARTUP_NOISE)."""
    no_cuda_driver = False
    for line in lines:
        if _NO_CUDA_DRIVER.match(line):
            no_cuda_driver = True
            continue
        if any(p.match(line) for p in _STARTUP_NOISE):
            continue
        if no_cuda_driver and _CUINIT_FAILED.match(line):
            continue
        yield line


def import_tensorflow_quietly():
    """Import TensorFlow and initialise its devices with stderr passed through
    `filter_startup_noise` (at the file-descriptor level: the noise comes from C++); every
    other line reaches stderr as it is written. Returns the tensorflow module."""
    try:
        stderr_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (an embedding host)
        stderr_fd = None
    if stderr_fd is None or "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf
    sys.stderr.flush()
    real_stderr = os.dup(stderr_fd)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, stderr_fd)
    os.close(write_fd)

    def forward() -> None:
        # Line by line as they come (not at the end), so that if the import crashes the
        # process, what it printed before has (almost always) reached the screen.
        with os.fdopen(read_fd, "rb") as pipe:
            lines = (raw.decode("utf-8", "replace") for raw in pipe)
            for line in filter_startup_noise(lines):
                os.write(real_stderr, line.encode("utf-8"))

    forwarder = threading.Thread(target=forward, name="tf-startup-stderr", daemon=True)
    forwarder.start()
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()  # CUDA's cuInit runs here, inside the filter
    finally:
        sys.stderr.flush()
        os.dup2(real_stderr, stderr_fd)  # drops the pipe's last writer: the forwarder ends
        forwarder.join(timeout=10)
        os.close(real_stderr)
    return tf


def _interrupt(signum, _frame) -> None:
    # SIGTERM outside the training loop behaves like Ctrl-C (the loop installs its own handler
    # that finishes the step and saves first).
    raise KeyboardInterrupt(signal.Signals(signum).name)


USAGE_EXIT_CODE = 2


def usage_error(message: str) -> int:
    """Print a usage error with where to find help (not absl's listing of every flag, which
    buries the one line that matters) and return the exit code."""
    print(
        f"tf-simclr: error: {message}\nRun 'tf-simclr --helpfull' to list every flag.",
        file=sys.stderr,
        flush=True,
    )
    return USAGE_EXIT_CODE


def main(argv: list[str], *, quiet_startup: bool = False) -> int:
    """The command behind `tf-simclr` (run by absl's app.run after it parsed the flags);
    returns the exit code. quiet_startup: filter TensorFlow's start-up noise from stderr."""
    if len(argv) > 1:
        return usage_error(f"Unexpected arguments: {' '.join(argv[1:])} (flags use --name=value).")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # TFDS and TensorFlow's checkpointing log through absl at INFO; keep the console to
    # tf_simclr's own progress (--verbosity=0 shows them). Through absl's verbosity, not the
    # logger's level: TensorFlow saves and restores that verbosity around SavedModel exports.
    if not FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        config = config_from_flags()
    except ConfigError as err:
        return usage_error(str(err))
    mode_defaults = describe_mode_defaults(config)
    if mode_defaults:
        log.info("%s", mode_defaults)

    if quiet_startup:
        tf = import_tensorflow_quietly()
    else:
        import tensorflow as tf
    gpus = len(tf.config.list_physical_devices("GPU"))
    log.info("TensorFlow %s, %s.", tf.__version__, f"{gpus} GPU(s)" if gpus else "CPU only")

    from tf_simclr.training import distribute
    from tf_simclr.training.checkpoints import CheckpointError
    from tf_simclr.workflows import report, runner
    from tf_simclr.workflows.train import NonFiniteLossError, TrainingInterrupted

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = runner.run(config)
    except TrainingInterrupted as err:
        logging.warning("%s", err)
        return 130
    except distribute.WorkerLostError as err:
        logging.error("%s", err)
        return distribute.WORKER_LOST_EXIT_CODE
    except KeyboardInterrupt as err:
        logging.warning(
            "Interrupted (%s). Complete checkpoints in %s are kept (an unfinished save is "
            "skipped on resume). Rerun the same command to resume.",
            err.args[0] if err.args else "SIGINT",
            config.model_dir,
        )
        return 130
    except (NonFiniteLossError, CheckpointError, FileNotFoundError, ValueError, OSError) as err:
        logging.error("%s", err)
        return 1
    except tf.errors.OpError as err:
        logging.error("TensorFlow error: %s", describe_tf_error(err))
        logging.debug("Details:", exc_info=True)
        return 1
    sys.stderr.flush()  # the log lines before the table
    print(report.format_report(result, config), flush=True)
    return 0


_USAGE = """tf-simclr: SimCLR pretraining, fine-tuning, evaluation and export.

  tf-simclr --mode=train_then_eval      # the embedded default dataset, a few minutes
  tf-simclr --mode=preview              # preview.png: images and their augmented views
  tf-simclr --recipe=cifar10_paper --dataset=cifar10 --train_minutes=30
  tf-simclr --helpfull                  # every flag
"""


def _show_flags_in_help() -> None:
    # absl's --help lists the flags of the main module (sys.argv[0]): the script that called
    # console_main, while the flags are defined here.
    for field in filter(has_flag, dataclasses.fields(Config)):
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[field.name])
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS["recipe"])
    main_module = sys.modules.get("__main__")
    if main_module is not None and not main_module.__doc__:  # pip's console-script wrapper
        main_module.__doc__ = _USAGE


def console_main() -> None:
    """Entry point of the `tf-simclr` command, `python -m tf_simclr` and `python run.py`."""
    # Before TensorFlow is imported, and only in the command (importing the library changes
    # nothing): TensorFlow's C++ INFO and WARNING lines, unless the user chose a level.
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    if quiet:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    _show_flags_in_help()
    app.run(functools.partial(main, quiet_startup=quiet), flags_parser=parse_command_line)
