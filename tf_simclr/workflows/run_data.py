"""Which data a run was trained on, checked wherever one run reads another.

A run records the identity of its training split (tf_simclr.data.identity) in its config.json
when it starts. Before anything is computed, every reader compares it with the data in front
of it:

- the same run again (resume, --mode=eval, --mode=export): other data is refused, naming both
  and what to give; the same fingerprint at another path is the same data, moved (logged);
- a head that gets scored or distilled (--teacher, the teacher_top1 of an evaluation): its
  class names, in label order, must be the dataset's (not only their number);
- a pretrained --checkpoint (fine-tuning, transfer evaluation): other data is the point of
  transfer, so it is allowed and logged; fine-tuning keeps the checkpoint's supervised head
  only for the same class names in the same order (tf_simclr.workflows.warm_start).

Runs written before identities were recorded still load, with a warning that their data
cannot be checked.
"""

from __future__ import annotations

import logging
import os

from tf_simclr.config import CONFIG_FILENAME, Config, ConfigError, run_config_of_checkpoint
from tf_simclr.data.identity import data_identity, describe
from tf_simclr.training import checkpoints as ckpt_lib

log = logging.getLogger(__name__)


class DataMismatchError(ValueError):
    """A run is read over data other than the data it was trained on, where that would give a
    wrong number; the message names both and what to do."""


def identity_of(config: Config) -> dict:
    """The identity of the training split `config` names, as it is now on disk (read without
    labels with --unlabelled); with --eval_dataset, that dataset's "train" split (the kNN bank
    and the probe's training data) under "eval_dataset"."""
    identity = data_identity(
        config.dataset, config.data_dir, config.train_split, unlabelled=config.unlabelled
    )
    if config.eval_dataset:
        identity["eval_dataset"] = data_identity(config.eval_dataset, config.data_dir, "train")
    return identity


def same_data(recorded: dict, current: dict) -> bool:
    """The same examples (fingerprint) with the same classes in the same order."""
    return (
        recorded.get("fingerprint") == current.get("fingerprint")
        and recorded.get("class_names") == current.get("class_names")
        and recorded.get("split") == current.get("split")
    )


def same_label_space(recorded: dict, current: dict) -> bool:
    """The same class names in the same label order."""
    return list(recorded.get("class_names") or []) == list(current.get("class_names") or [])


def _recorded(run: Config, where: str, current: dict) -> dict | None:
    """The run's recorded identity; None (with the warning) for a run that predates them."""
    if run.data_identity is None:
        stored = os.path.expanduser(run.dataset)
        relative = (
            f" Its --dataset={run.dataset} was stored as given, a relative path: it is read "
            f"against this working directory ({os.getcwd()}), maybe not the one it was trained "
            "from."
            if not os.path.isabs(stored) and os.path.exists(stored)
            else ""
        )
        log.warning(
            "%s was written before tf_simclr recorded a run's data (its config.json has no "
            "data_identity): whether it was trained on %s cannot be checked.%s",
            where,
            current.get("dataset"),
            relative,
        )
    return run.data_identity


def _difference(recorded: dict, current: dict) -> str:
    if recorded.get("split") != current.get("split"):
        return f"another split ({recorded.get('split')!r} vs {current.get('split')!r})"
    old, new = recorded.get("class_names") or [], current.get("class_names") or []
    if old != new:
        if len(old) == len(new) and set(old) == set(new):
            return "the same classes in another label order"
        if len(old) == len(new):
            return f"{len(new)} classes as well, but other ones"
        return f"{len(old)} vs {len(new)} classes"
    return (
        f"the same classes but other examples ({recorded.get('num_examples')} vs "
        f"{current.get('num_examples')}, fingerprint {recorded.get('fingerprint')} vs "
        f"{current.get('fingerprint')})"
    )


def _recorded_flags(recorded: dict) -> str:
    flags = f"--dataset={recorded.get('dataset')}"
    if recorded.get("kind") == "tfds" and recorded.get("data_dir"):
        # The version directory was recorded; TFDS's data_dir is two levels up.
        flags += f" --data_dir={os.path.dirname(os.path.dirname(recorded['data_dir']))}"
    return flags + f" --train_split={recorded.get('split')}"


# What reading a run over other data would do, by reader.
_CONSEQUENCES = {
    "resume": (
        "Resuming would go on training it on other images than its checkpoints saw. Give the "
        "run's data ({flags}), or a new --model_dir to train on this data."
    ),
    "eval": (
        "Evaluating it there would report its accuracy on data it was not trained on as its "
        "own, and replace its result.json. Give the run's data ({flags}); to evaluate its "
        "frozen features on other data (transfer), give --mode=eval --checkpoint={model_dir} "
        "--model_dir=<a new folder>."
    ),
    "export": (
        "Its export would describe another dataset's classes than its head predicts. Give "
        "the run's data ({flags})."
    ),
    "stage": (
        "The recipe would reuse (or resume) that stage as if it had been trained on this data. "
        "Give the recipe's data ({flags}), or a new --model_dir."
    ),
}


def check_own_data(config: Config, current: dict, *, reader: str) -> None:
    """`reader` ("resume", "eval", "export" or a recipe's "stage") reads the run in
    config.model_dir over the data `current` describes: refused (DataMismatchError) unless that is the run's recorded data;
    the same data at another path is logged as moved. No run there, or one without a recorded
    identity (a warning): nothing to check."""
    model_dir = config.model_dir
    if not os.path.isfile(os.path.join(model_dir, CONFIG_FILENAME)):
        return
    recorded = _recorded(Config.load(model_dir), f"--model_dir={model_dir}", current)
    if recorded is None:
        return
    _check_eval_data(config, recorded, current, reader)
    if same_data(recorded, current):
        if recorded.get("dataset") != current.get("dataset"):
            log.info(
                "The data of --model_dir=%s moved: trained on %s, found at %s with the same "
                "files and classes (fingerprint %s).",
                model_dir,
                recorded.get("dataset"),
                current.get("dataset"),
                current.get("fingerprint"),
            )
        return
    if recorded.get("dataset") == current.get("dataset"):
        now = f"the data at that path changed since: {describe(current, location=False)}"
    else:
        now = f"--dataset={config.dataset} is {describe(current, location=False)}"
    raise DataMismatchError(
        f"--model_dir={model_dir} holds a run trained on {describe(recorded)}; {now}: "
        f"{_difference(recorded, current)}. "
        + _CONSEQUENCES[reader].format(model_dir=model_dir, flags=_recorded_flags(recorded))
    )


def _check_eval_data(config: Config, recorded: dict, current: dict, reader: str) -> None:
    """A run recorded with an --eval_dataset is resumed, evaluated or exported with that
    labelled data only (else its result.json would mix numbers on other data). A run without
    one may be given one (an unlabelled run's first evaluation)."""
    old, new = recorded.get("eval_dataset"), current.get("eval_dataset")
    if old is None or (new is not None and same_data(old, new)):
        return
    now = (
        f"--eval_dataset={config.eval_dataset} is {describe(new)}"
        if new is not None
        else "no --eval_dataset is given now (its training data would be evaluated instead)"
    )
    what = {"resume": "Resuming it", "eval": "Evaluating it"}.get(reader, "Reading it")
    raise DataMismatchError(
        f"--model_dir={config.model_dir} holds a run evaluated on the labelled data "
        f"--eval_dataset={old.get('dataset')} ({describe(old, location=False)}); {now}. "
        f"{what} would report the kNN and linear probe on other labelled data as this run's. "
        f"Give --eval_dataset={old.get('dataset')}; to evaluate its frozen features on other "
        f"labelled data, give --mode=eval --checkpoint={config.model_dir} --model_dir=<a new "
        "folder> --dataset=<that data>."
    )


def check_teacher(config: Config, current: dict) -> None:
    """--teacher's head is scored (teacher_top1) and distilled against the dataset's labels:
    refused (DataMismatchError) unless its run was trained on the same class names in the
    same order. A teacher without a run's config.json (an export copied elsewhere) or one
    written before identities were recorded cannot be checked (a warning)."""
    where = f"--teacher={config.teacher}"
    try:
        source = run_config_of_checkpoint(config.teacher)
    except ConfigError:
        return  # a damaged config.json: loading the teacher names the problem

    if source is None:
        log.warning(
            "%s has no config.json beside it: whether it predicts the classes of %s (%s) in "
            "this order cannot be checked.",
            where,
            config.dataset,
            ", ".join(current.get("class_names") or []),
        )
        return
    recorded = _recorded(source, where, current)
    if recorded is None:
        return
    if not same_label_space(recorded, current):
        raise DataMismatchError(
            f"{where} was trained on {describe(recorded)}; --dataset={config.dataset} is "
            f"{describe(current)}: {_difference(recorded, current)}. Its predictions would be "
            "distilled and scored (teacher_top1) against labels it never saw. Distil a "
            "teacher fine-tuned on this dataset (--train_mode=finetune "
            f"--checkpoint=<pretrained> --dataset={config.dataset}), or give its data "
            f"({_recorded_flags(recorded)})."
        )
    if not same_data(recorded, current):
        log.info(
            "%s was fine-tuned on other data with the same classes (%s): its predictions "
            "are used for %s.",
            where,
            describe(recorded),
            describe(current),
        )


def pretrained_identity(config: Config, current: dict, *, purpose: str) -> dict | None:
    """The recorded identity of the run --checkpoint comes from (None: unknown, warned).
    Other data than `current` is transfer, allowed and logged with `purpose` (what the
    checkpoint is used for)."""
    source = run_config_of_checkpoint(config.checkpoint)
    where = f"--checkpoint={config.checkpoint}"
    if source is None:
        log.warning(
            "%s has no config.json beside it: which data it was trained on is unknown.", where
        )
        return None
    recorded = _recorded(source, where, current)
    if recorded is not None and not same_data(recorded, current):
        log.info(
            "Transfer: %s was trained on %s; %s on %s.",
            where,
            describe(recorded),
            purpose,
            describe(current),
        )
    return recorded


def has_checkpoints(model_dir: str) -> bool:
    return bool(ckpt_lib.list_checkpoints(model_dir))
