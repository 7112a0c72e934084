"""Convert models of the reference SimCLR TF2 code into tf_simclr model_dirs.

SRC is a reference SavedModel (the format of every published SimCLR v1/v2 model) or a training
checkpoint of the reference code (a ``ckpt-N`` prefix or the directory holding it). The network
is read from SRC's variables (`tf_simclr.reference`); nothing has to be given. DST becomes an
ordinary tf_simclr model_dir: ``config.json``, ``ckpt-<step>`` (weights, and for training
checkpoints the LARS momentum slots and the step), ``saved_model/<step>/`` (the TF-Hub style
export, with the reference module's output names), ``model.keras`` (native Keras format) and
``conversion.json`` (what was found and verified).

    python -m tf_simclr.convert --src=r50_1x_sk0/saved_model --dst=runs/r50_1x_sk0 --verify

``--verify`` loads SRC with ``tf.saved_model.load`` (it runs SRC's program: only for sources you
trust), runs both networks on the same random images in inference mode and fails above the
tolerance. Without it SRC is only read as data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import uuid

import numpy as np

from tf_simclr import reference
from tf_simclr.config import Config, ConfigError
from tf_simclr.reference import Architecture, ReferenceFormatError, ReferenceSource

log = logging.getLogger(__name__)

# Outputs agree when |ours - reference| <= TOLERANCE * max(1, max |reference|).
TOLERANCE = 1e-4
CONVERSION_FILENAME = "conversion.json"
KERAS_FILENAME = "model.keras"

# Reference flags that describe the network: when given with --reference_flags they must agree
# with what the variables say.
_ARCHITECTURE_FLAGS = (
    "resnet_depth",
    "width_multiplier",
    "sk_ratio",
    "se_ratio",
    "proj_head_mode",
    "num_proj_layers",
    "proj_out_dim",
    "ft_proj_selector",
    "train_mode",
    "num_classes",
)


class ConversionError(ValueError):
    """SRC cannot be converted (not a reference model, damaged, or DST is in the way)."""


@dataclasses.dataclass
class ConvertedModel:
    """A reference model rebuilt as a tf_simclr SimCLRModel with its weights."""

    model: object  # tf_simclr.network.model.SimCLRModel
    config: Config
    architecture: Architecture
    source: ReferenceSource
    pairs: list  # [(tf_simclr weight path, reference attribute path)]


# ------------------------------------------------------------------------------ config
def reference_config(
    arch: Architecture, *, image_size: int | None = None, reference_flags: dict | None = None
) -> Config:
    """The tf_simclr Config of a converted reference model.

    The architecture comes from `arch`. Every setting where tf_simclr departs from the
    reference takes the reference's value (shared head optimizer with the L2 term, no head
    input norm, unused head batch norms in training mode, the reference's 2x loss), so that
    training continues as the reference would. Training hyperparameters are not stored in the
    reference's files: they take the reference's defaults unless `reference_flags` (the run's
    flags) gives them; give your flags again when you continue training.
    """
    if image_size is None:
        image_size = 32 if arch.cifar_stem else 224
    elif (image_size <= 32) != arch.cifar_stem:
        stem = "CIFAR (3x3/1)" if arch.cifar_stem else "ImageNet (7x7/2 or ResNet-D)"
        need = "<= 32" if arch.cifar_stem else "> 32"
        raise ConversionError(
            f"--image_size={image_size} would select the other stem; the source has the {stem} "
            f"stem, which tf_simclr uses for image sizes {need}."
        )
    values = dict(
        # The reference's defaults for what the files do not hold.
        learning_rate=0.3,
        learning_rate_scaling="linear",
        warmup_epochs=10,
        weight_decay=1e-6,
        temperature=0.1,
        optimizer="lars",
        momentum=0.9,
        batch_norm_decay=0.9,
        color_jitter_strength=1.0,
    )
    for key, value in (reference_flags or {}).items():
        if key in _ARCHITECTURE_FLAGS or key == "image_size":
            continue
        if key in {f.name for f in dataclasses.fields(Config)}:
            values[key] = value
    values.update(
        resnet_depth=arch.resnet_depth,
        width_multiplier=arch.width_multiplier,
        sk_ratio=arch.sk_ratio,
        se_ratio=0.0,
        image_size=image_size,
        proj_head_mode=arch.proj_head_mode,
        proj_out_dim=arch.proj_out_dim,
        num_proj_layers=arch.num_proj_layers,
        ft_proj_selector=arch.ft_proj_selector,
        train_mode=arch.train_mode,
        lineareval_while_pretraining=bool(arch.num_classes) and arch.train_mode == "pretrain",
        num_classes=arch.num_classes or 0,
        global_bn=bool(values.get("global_bn", True)),
        sup_head_input_norm=False,
        sup_head_optimizer="shared",
        ft_update_unused_head_bn=True,
        loss_scale="reference",
        mode="train",
        # Optional settings: fine-tuning from a checkpoint is done; blur is in our pipeline.
        checkpoint=None,
    )
    values.pop("fine_tune_after_block", None)  # a fine-tuning setting, not the network's
    try:
        return Config(**values)
    except (ConfigError, TypeError) as err:
        raise ConversionError(f"The converted model's settings are invalid: {err}") from err


def read_reference_flags(path: str) -> dict:
    """Reference flags from a JSON object file or an absl flagfile (``--name=value`` lines)."""
    path = os.path.expanduser(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ConversionError(f"--reference_flags={path} cannot be read: {err.strerror}.") from err
    if text.lstrip().startswith("{"):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConversionError(f"--reference_flags={path} is not valid JSON: {err}.") from err
        if not isinstance(values, dict):
            raise ConversionError(f"--reference_flags={path} must hold a JSON object.")
        return values
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("--"):
            raise ConversionError(
                f"--reference_flags={path} line {number} is not a flag (--name=value): {line!r}."
            )
        name, _, value = line[2:].partition("=")
        if not value and name.startswith("no"):
            values[name[2:]] = False
        elif not value:
            values[name] = True
        else:
            values[name] = _parse_flag_value(value)
    return values


def _parse_flag_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _check_flags_agree(arch: Architecture, flags: dict, source: str) -> None:
    found = dataclasses.asdict(arch)
    if flags.get("proj_head_mode") == "nonlinear" and arch.proj_head_mode == "none":
        found["proj_head_mode"] = "none"
    for key in _ARCHITECTURE_FLAGS:
        if key not in flags or key not in found:
            continue
        given, have = flags[key], found[key]
        if key == "num_proj_layers" and arch.proj_head_mode == "none":
            continue
        if key == "ft_proj_selector" and not arch.num_classes:
            continue
        if key == "se_ratio":
            have = 0.0
        if isinstance(given, float) or isinstance(have, float):
            same = abs(float(given) - float(have)) <= 1e-9 * max(1.0, abs(float(given)))
        else:
            same = given == have
        if not same:
            raise ConversionError(
                f"--reference_flags says {key}={given!r} but the variables of {source} say "
                f"{key}={have!r}: the flags belong to another model."
            )


# ------------------------------------------------------------------------------ import
def load_reference(
    src: str,
    *,
    image_size: int | None = None,
    reference_flags: dict | None = None,
    overrides: dict | None = None,
) -> ConvertedModel:
    """Read the reference model at `src` (as data) and return it as a tf_simclr model.

    `overrides` changes settings of the Config `reference_config` makes (for example
    ``fused_batch_norm=False`` or training hyperparameters; not the architecture). Raises
    ConversionError naming what cannot be read or placed.
    """
    from tf_simclr import factory

    try:
        source = reference.read_source(src)
        arch = reference.infer_architecture(source)
        pairs = reference.weight_mapping(arch)
        reference.check_mapping(source, pairs)
    except ReferenceFormatError as err:
        raise ConversionError(str(err)) from err
    if reference_flags:
        _check_flags_agree(arch, reference_flags, src)
    config = reference_config(arch, image_size=image_size, reference_flags=reference_flags)
    if overrides:
        try:
            config = config.replace(**overrides)
        except (ConfigError, TypeError) as err:
            raise ConversionError(f"Invalid settings for the converted model: {err}") from err
    model = factory.build_model(config, arch.num_classes)
    weights = {w.path: w for w in model.weights}
    ours = [path for path, _ in pairs]
    if set(weights) != set(ours):
        extra = sorted(set(weights) - set(ours))
        lacking = sorted(set(ours) - set(weights))
        raise ConversionError(
            f"The tf_simclr network built for {src} does not have the layers the mapping "
            f"expects (unexpected: {extra[:3]}, absent: {lacking[:3]}): check --config settings."
        )
    plan = []
    for path, ref_path in pairs:
        variable = source.variables[ref_path]
        if tuple(weights[path].shape) != variable.shape:
            raise ConversionError(
                f"{src}: {ref_path} has shape {variable.shape} but its place in the tf_simclr "
                f"network, {path}, has shape {tuple(weights[path].shape)}."
            )
        plan.append((weights[path], variable.key))
    try:
        for weight, key in plan:
            weight.assign(source.read(key))
    except ReferenceFormatError as err:
        raise ConversionError(str(err)) from err
    return ConvertedModel(model, config, arch, source, pairs)


def restore_optimizer_state(converted: ConvertedModel, optimizer) -> int:
    """Copy the source's LARS momentum slots into `optimizer` (a tf_simclr LARS built on the
    model's optimized variables) and set its step; returns the number of slots copied."""
    source = converted.source
    weights = {w.path: w for w in converted.model.weights}
    optimized = {id(v) for v in converted.model.optimized_variables}
    copied = 0
    for path, ref_path in converted.pairs:
        slot = source.variables[ref_path].slot_key
        if slot is None:
            continue
        weight = weights[path]
        if not hasattr(optimizer, "momentum_variable"):
            raise ConversionError(
                f"{source.path} holds momentum slots, which are carried over only for LARS "
                f"(--optimizer=lars); this model's optimizer is {type(optimizer).__name__}."
            )
        if id(weight) not in optimized:
            raise ConversionError(
                f"{source.path} has a momentum slot for {ref_path}, which the tf_simclr "
                f"training of this model would not update ({path}); the source was trained "
                "with other settings."
            )
        try:
            optimizer.momentum_variable(weight).assign(source.read(slot))
        except ReferenceFormatError as err:
            raise ConversionError(str(err)) from err
        copied += 1
    if source.global_step is not None:
        optimizer.iterations.assign(source.global_step)
    return copied


# ------------------------------------------------------------------------------ verify
def verification_images(image_size: int, *, batch: int = 4, seed: int = 0) -> np.ndarray:
    """Seeded random images in [0, 1] for comparing two networks."""
    rng = np.random.default_rng(seed)
    return rng.random((batch, image_size, image_size, 3), dtype=np.float32)


def compare_outputs(ours: dict, theirs: dict, names=None) -> dict:
    """{name: (max |difference|, tolerance)} for the outputs both dicts hold."""
    names = names or sorted(set(ours) & set(theirs))
    result = {}
    for name in names:
        a = np.asarray(ours[name], np.float64)
        b = np.asarray(theirs[name], np.float64)
        if a.shape != b.shape:
            result[name] = (float("inf"), 0.0)
            continue
        result[name] = (float(np.abs(a - b).max()), TOLERANCE * max(1.0, float(np.abs(b).max())))
    return result


def verify_against_source(converted: ConvertedModel, *, images=None) -> dict:
    """Run the source SavedModel (tf.saved_model.load: it executes SRC's program) and the
    converted network on the same images in inference mode; {output: (max diff, tol)}."""
    import tensorflow as tf

    if converted.source.kind != "saved_model":
        raise ConversionError(
            "--verify runs the source's program, but a training checkpoint holds no program: "
            "verify a SavedModel of the same model instead (the export of DST is always "
            "checked against the converted network)."
        )
    if images is None:
        images = verification_images(converted.config.image_size)
    loaded = tf.saved_model.load(converted.source.path)
    theirs = loaded(tf.constant(images), trainable=False)
    ours = converted.model(tf.constant(images), training=False)
    return compare_outputs(ours, theirs)


# ----------------------------------------------------------------------------- writing
# The hidden sibling a conversion writes into before renaming it to --dst, named with the
# writing process's id so that a later run can tell a running conversion from a killed one.
_TEMPORARY_MARK = ".tmp-convert-"


def _temporary_path(dst: str) -> str:
    parent, name = os.path.split(os.path.abspath(os.path.normpath(dst)))
    return os.path.join(parent, f".{name}{_TEMPORARY_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _clear_interrupted_conversions(dst: str, echo) -> None:
    """Remove (and say so) the temporary folders of conversions into `dst` whose process is
    gone (killed before the rename); refuse while one of them is still running."""
    parent, name = os.path.split(os.path.abspath(os.path.normpath(dst)))
    prefix = f".{name}{_TEMPORARY_MARK}"
    for entry in sorted(os.listdir(parent)):
        if not entry.startswith(prefix):
            continue
        path = os.path.join(parent, entry)
        match = re.match(r"(\d+)-", entry[len(prefix) :])
        pid = int(match.group(1)) if match else None
        if pid is not None and pid != os.getpid() and _process_alive(pid):
            raise ConversionError(
                f"Another conversion into --dst={dst} is running (process {pid}, writing "
                f"{path}); nothing was written. Wait for it to finish, or choose another --dst "
                f"(if no conversion is running, delete {path})."
            )
        shutil.rmtree(path, ignore_errors=True)
        echo(f"Removed {path}: the unfinished output of an interrupted conversion into {dst}.")


def _check_destination(dst: str) -> None:
    if os.path.isfile(dst):
        raise ConversionError(f"--dst={dst} is a file; give a directory path for the model_dir.")
    if os.path.isdir(dst) and os.listdir(dst):
        raise ConversionError(
            f"--dst={dst} exists and is not empty; nothing was written. Choose a new directory "
            "(or delete that one)."
        )
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise ConversionError(f"Cannot write into {parent} (permission denied).")


def _write_model_dir(converted: ConvertedModel, directory: str, report: dict) -> dict:
    import tensorflow as tf

    from tf_simclr import factory
    from tf_simclr.training import checkpoints as ckpt_lib
    from tf_simclr.workflows import export as export_lib

    model, config, source = converted.model, converted.config, converted.source
    step = source.global_step or 0
    optimizer = factory.build_optimizer(config, 1, learning_rate=config.learning_rate)
    optimizer.build(model.optimized_variables)
    slots = restore_optimizer_state(converted, optimizer)
    config.save(directory)
    global_step = tf.Variable(step, dtype=tf.int64, trainable=False, name="global_step")
    checkpoint = ckpt_lib.training_checkpoint(model, optimizer, global_step=global_step)
    manager = tf.train.CheckpointManager(
        checkpoint, directory, max_to_keep=config.keep_checkpoint_max, step_counter=global_step
    )
    checkpoint_path = manager.save(checkpoint_number=step)
    export_path = export_lib.export_saved_model(
        model, os.path.join(directory, "saved_model"), step=step, keep_max=1
    )
    model.save(os.path.join(directory, KERAS_FILENAME))
    report.update(step=step, momentum_slots=slots)
    return {
        "checkpoint": os.path.basename(checkpoint_path),
        "export": os.path.relpath(export_path, directory),
    }


def _check_export(converted: ConvertedModel, export_path: str) -> dict:
    """The written module answers like the converted network (a reload round trip)."""
    import tensorflow as tf

    images = verification_images(converted.config.image_size, seed=1)
    loaded = tf.saved_model.load(export_path)
    theirs = loaded(tf.constant(images), training=False)
    ours = converted.model(tf.constant(images), training=False)
    return compare_outputs(theirs, ours)


def _format_checks(checks: dict) -> list[str]:
    lines = []
    for name, (diff, tol) in sorted(checks.items()):
        verdict = "ok" if diff <= tol else "ABOVE TOLERANCE"
        lines.append(f"  {name:18s} max |diff| {diff:.3g}  (tolerance {tol:.3g})  {verdict}")
    return lines


def convert(
    src: str,
    dst: str,
    *,
    verify: bool = False,
    image_size: int | None = None,
    reference_flags: dict | None = None,
    echo=print,
) -> dict:
    """Convert the reference model at `src` into the tf_simclr model_dir `dst`.

    `dst` is written in a temporary sibling directory and renamed into place at the end, so it
    is either complete or absent. Returns a report (also written to dst/conversion.json);
    raises ConversionError (nothing written) when the source cannot be converted or, with
    `verify`, when an output differs from the source's by more than the tolerance.
    """
    src = os.path.expanduser(os.fspath(src))
    dst = os.path.expanduser(os.fspath(dst))
    _check_destination(dst)
    _clear_interrupted_conversions(dst, echo)
    converted = load_reference(src, image_size=image_size, reference_flags=reference_flags)
    report = _describe_source(converted, src, echo)
    if verify:
        _verify_or_raise(converted, report, dst, echo)
    paths = _write_into_place(converted, dst, report)
    echo(
        f"Wrote {dst}: config.json, {paths['checkpoint']} (step {report['step']}, "
        f"{report['momentum_slots']} momentum slots), {paths['export']}, {KERAS_FILENAME}."
    )
    return report


def _describe_source(converted: ConvertedModel, src: str, echo) -> dict:
    """Echo what was found in the source; the report's part about it."""
    arch, source = converted.architecture, converted.source
    echo(f"Source: {src} (reference {source.kind.replace('_', ' ')}).")
    echo(f"Found: {arch.describe()}.")
    for what, how in arch.found.items():
        echo(f"  {what}: {how}")
    echo(f"Mapped all {len(converted.pairs)} variables.")
    return {
        "source": os.path.abspath(src),
        "source_kind": source.kind,
        "architecture": {k: v for k, v in dataclasses.asdict(arch).items() if k != "found"},
        "found": arch.found,
        "variables": len(converted.pairs),
    }


def _checks_report(checks: dict) -> dict:
    return {k: {"max_abs_diff": d, "tolerance": t} for k, (d, t) in checks.items()}


def _above_tolerance(checks: dict) -> list[str]:
    # "not d <= t" also catches a NaN difference.
    return [k for k, (d, t) in checks.items() if not d <= t]


def _verify_or_raise(converted: ConvertedModel, report: dict, dst: str, echo) -> None:
    """--verify: compare with the source's own program; ConversionError when it differs."""
    echo("Verifying against the source (tf.saved_model.load runs its program) ...")
    checks = verify_against_source(converted)
    for line in _format_checks(checks):
        echo(line)
    report["verify"] = _checks_report(checks)
    bad = _above_tolerance(checks)
    if bad:
        raise ConversionError(
            f"--verify: {', '.join(bad)} differ from the source by more than the tolerance; "
            f"nothing was written to {dst}."
        )


def _write_into_place(converted: ConvertedModel, dst: str, report: dict) -> dict:
    """Write the model_dir in a temporary sibling of `dst`, check its export and rename it to
    `dst`; on any error the temporary directory goes and `dst` is untouched. Returns the
    written paths (also added to `report`, which is saved as dst/conversion.json)."""
    tmp = _temporary_path(dst)
    os.makedirs(tmp)
    try:
        paths = _write_model_dir(converted, tmp, report)
        checks = _check_export(converted, os.path.join(tmp, paths["export"]))
        report["export_check"] = _checks_report(checks)
        bad = _above_tolerance(checks)
        if bad:
            raise ConversionError(
                f"The exported module's {', '.join(bad)} differ from the converted network; "
                f"nothing was written to {dst}."
            )
        report.update(paths)
        with open(os.path.join(tmp, CONVERSION_FILENAME), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, sort_keys=True)
            f.write("\n")
        _replace_destination(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return paths


def _replace_destination(tmp: str, dst: str) -> None:
    """Rename the finished `tmp` to `dst`, unless another process filled `dst` meanwhile."""
    if os.path.isfile(dst) or (os.path.isdir(dst) and os.listdir(dst)):
        raise ConversionError(
            f"--dst={dst} was written by another process while this conversion ran (it was "
            "empty or absent at the start); it is left as that process wrote it and nothing "
            "of this conversion was kept. Convert into another --dst if you need both."
        )
    if os.path.isdir(dst):
        os.rmdir(dst)  # empty
    os.replace(tmp, dst)


# --------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tf_simclr.convert",
        description="Convert a reference SimCLR TF2 SavedModel or training checkpoint into a "
        "tf_simclr model_dir.",
    )
    parser.add_argument(
        "--src",
        required=True,
        help="reference SavedModel dir, ckpt-N prefix or the directory holding ckpt-N files",
    )
    parser.add_argument("--dst", required=True, help="new tf_simclr model_dir to create")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="load SRC with "
        "tf.saved_model.load (runs its program: trusted sources only) and compare "
        "outputs; exit 1 above the tolerance",
    )
    parser.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="input size recorded in config.json (default 224, or 32 for CIFAR-stem models)",
    )
    parser.add_argument(
        "--reference_flags",
        default=None,
        help="the reference run's flags "
        "(JSON object or absl flagfile): hyperparameters for continuing training",
    )
    return parser


def main(argv=None) -> int:
    """Command line entry point; returns the exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        flags = read_reference_flags(args.reference_flags) if args.reference_flags else None
        convert(
            args.src,
            args.dst,
            verify=args.verify,
            image_size=args.image_size,
            reference_flags=flags,
        )
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
