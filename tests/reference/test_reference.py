"""Parity with the reference SimCLR TF2 code, on models the reference code wrote itself.

The fixtures (../shared/fixtures, see its README) hold small randomised models in both of the
reference's formats, the outputs it computed for fixed images, and one complete reference
training step. The network is imported with tf_simclr.workflows.convert and compared number by number.

Batch statistics over 4 or 8 images are ill-conditioned: perturbing the input images by one
float32 ulp moves some training-mode outputs (and some variables after a step) by more than the
issue's tolerance, so any two correct float32 implementations (the reference's own module run
on another CPU included) differ by that much. Training-mode comparisons therefore allow, on top
of the fixed tolerance, 3x the change that one-ulp input perturbations cause in our own
computation, measured in the test; where the computation is well-conditioned that allowance is
negligible and the fixed tolerance governs.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from helpers.files import reference_io

from tf_simclr import factory, reference
from tf_simclr.workflows import convert, train

ALL = ("r18_cifar_w025_v1", "r50_sk1_w0125_v2", "r50_sk0_w0125_finetuned_v2")
WITH_STEP = ("r18_cifar_w025_v1", "r50_sk0_w0125_finetuned_v2")
FORMATS = ("saved_model", "ckpt")
OUTPUTS = (
    "initial_conv",
    "initial_max_pool",
    "block_group1",
    "block_group2",
    "block_group3",
    "block_group4",
    "final_avg_pool",
    "proj_head_input",
    "proj_head_output",
    "logits_sup",
)
OUTPUT_TOL = 1e-4  # x max(1, max |reference output|)
STEP_TOL = 1e-5  # relative for losses; x max(1, max |reference variable|) for variables
NOISE_FACTOR = 3.0
ULP = 2.0**-23


def _flags(root, name) -> dict:
    with open(os.path.join(root, name, "flags.json"), encoding="utf-8") as f:
        return json.load(f)


def _perturbed(x: np.ndarray, seed: int) -> np.ndarray:
    """x with every value moved by one float32 ulp (relative), up or down at random."""
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=x.shape)
    return (x.astype(np.float64) * (1.0 + signs * ULP)).astype(np.float32)


def _outputs(model, images, training):
    out = model(tf.constant(images), training=training)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


# -------------------------------------------------------------------------- reading
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ALL)
def test_architecture_is_read_from_the_variables(reference_fixtures, name, fmt):
    flags = _flags(reference_fixtures, name)
    source = reference.read_source(os.path.join(reference_fixtures, name, fmt))
    arch = reference.infer_architecture(source)
    assert arch.resnet_depth == flags["resnet_depth"]
    assert arch.width_multiplier == pytest.approx(flags["width_multiplier"])
    assert arch.sk_ratio == pytest.approx(flags["sk_ratio"])
    assert arch.cifar_stem == (flags["image_size"] <= 32)
    assert arch.proj_head_mode == flags["proj_head_mode"]
    assert arch.num_proj_layers == flags["num_proj_layers"]
    assert arch.proj_out_dim == flags["proj_out_dim"]
    assert arch.num_classes == flags["num_classes"]
    assert arch.ft_proj_selector == flags["ft_proj_selector"]
    assert arch.train_mode == flags["train_mode"]
    # Every variable of the source has a place, and the training checkpoint carries the step.
    reference.check_mapping(source, reference.weight_mapping(arch))
    assert (source.global_step is not None) == (fmt == "ckpt")


# ------------------------------------------------------------------------- inference
def _inference_report(model, io) -> dict:
    ours = _outputs(model, io["inputs"], training=False)
    theirs = {k: io[f"infer/{k}"] for k in OUTPUTS}
    return convert.compare_outputs(ours, theirs, OUTPUTS)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ALL)
def test_inference_outputs_equal_the_reference(reference_fixtures, name, fmt):
    io = reference_io(reference_fixtures, name)
    assert sorted(k[6:] for k in io.files if k.startswith("infer/")) == sorted(OUTPUTS)
    converted = convert.load_reference(os.path.join(reference_fixtures, name, fmt))
    report = _inference_report(converted.model, io)
    bad = {k: v for k, v in report.items() if not v[0] <= v[1]}
    assert not bad, f"outputs above tolerance (max diff, tol): {bad}"


@pytest.mark.parametrize(
    "mutation",
    ["swap_mean_and_variance", "swap_gamma_and_beta", "swap_two_layers", "swap_stem_bn_stats"],
)
def test_parity_check_fails_when_the_mapping_is_wrong(reference_fixtures, mutation):
    name = "r18_cifar_w025_v1"
    io = reference_io(reference_fixtures, name)
    converted = convert.load_reference(os.path.join(reference_fixtures, name, "saved_model"))
    weights = {w.path: w for w in converted.model.weights}

    def swap(a, b):
        va, vb = weights[a].numpy(), weights[b].numpy()
        weights[a].assign(vb)
        weights[b].assign(va)

    layer = "block_group2/block_1/bn1_batch_normalization"
    if mutation == "swap_mean_and_variance":
        swap(f"{layer}/moving_mean", f"{layer}/moving_variance")
    elif mutation == "swap_gamma_and_beta":
        swap(f"{layer}/gamma", f"{layer}/beta")
    elif mutation == "swap_two_layers":
        swap("block_group3/block_1/conv1/conv2d/kernel", "block_group3/block_1/conv2/conv2d/kernel")
    else:
        stem = "initial_max_pool/stem_batch_normalization"
        swap(f"{stem}/moving_mean", f"{stem}/moving_variance")
    report = _inference_report(converted.model, io)
    assert any(not diff <= tol for diff, tol in report.values()), report


# -------------------------------------------------------------------- training mode
def _training_noise(model, images) -> dict:
    """Largest change of each training-mode output under one-ulp input perturbations."""
    base = _outputs(model, images, training=True)
    noise = dict.fromkeys(base, 0.0)
    for seed in (1, 2):
        moved = _outputs(model, _perturbed(images, seed), training=True)
        for k in base:
            noise[k] = max(noise[k], float(np.abs(moved[k] - base[k]).max()))
    return base, noise


@pytest.mark.parametrize("name", ALL)
def test_training_mode_outputs_equal_the_reference(reference_fixtures, name):
    io = reference_io(reference_fixtures, name)
    # fused_batch_norm=False: batch statistics computed as the reference computes them.
    converted = convert.load_reference(
        os.path.join(reference_fixtures, name, "saved_model"),
        overrides={"fused_batch_norm": False},
    )
    ours, noise = _training_noise(converted.model, io["inputs"])
    names = [k[6:] for k in io.files if k.startswith("train/")]
    assert {"final_avg_pool", "logits_sup"} <= set(names)
    failures = {}
    for k in names:
        ref = io[f"train/{k}"]
        diff = float(np.abs(ours[k] - ref).max())
        tol = OUTPUT_TOL * max(1.0, float(np.abs(ref).max())) + NOISE_FACTOR * noise[k]
        if not diff <= tol:
            failures[k] = (diff, tol, noise[k])
    assert not failures, f"(max diff, tolerance, one-ulp noise): {failures}"


@pytest.mark.parametrize("name", ALL)
def test_training_mode_equals_the_reference_module_run_here(reference_fixtures, name):
    """The reference's own SavedModel, run on this machine in training mode (its outputs then
    depend only on the batch), against ours: all ten outputs."""
    path = os.path.join(reference_fixtures, name, "saved_model")
    images = reference_io(reference_fixtures, name)["inputs"]
    module = tf.saved_model.load(path)
    theirs = {k: np.asarray(v) for k, v in module(tf.constant(images), trainable=True).items()}
    converted = convert.load_reference(path, overrides={"fused_batch_norm": False})
    ours, noise = _training_noise(converted.model, images)
    assert sorted(theirs) == sorted(OUTPUTS)
    failures = {}
    for k in OUTPUTS:
        diff = float(np.abs(ours[k] - theirs[k]).max())
        tol = OUTPUT_TOL * max(1.0, float(np.abs(theirs[k]).max())) + NOISE_FACTOR * noise[k]
        if not diff <= tol:
            failures[k] = (diff, tol)
    assert not failures, failures


# --------------------------------------------------------------------- one step
def _one_step_runner(root, name):
    """The fixture's step settings, the converted model and a function that takes one training
    step on the fixture's batch (or a perturbed copy of it) from the checkpoint's state. The
    step is traced once; each call first puts every model and optimizer variable back to the
    checkpoint's values, so the calls are independent steps from the same start."""
    fixture = os.path.join(root, name)
    with open(os.path.join(fixture, "step.json"), encoding="utf-8") as f:
        step = json.load(f)
    batch = np.load(os.path.join(fixture, "step_batch.npz"))
    converted = convert.load_reference(
        os.path.join(fixture, "ckpt_before_step"),
        reference_flags=_flags(root, name),
        overrides=dict(
            fused_batch_norm=False,
            optimizer=step["optimizer"],
            momentum=step["momentum"],
            weight_decay=step["weight_decay"],
            temperature=step["temperature"],
            hidden_norm=step["hidden_norm"],
            train_batch_size=step["train_batch_size"],
        ),
    )
    config, model = converted.config, converted.model
    optimizer = factory.build_optimizer(
        config, step["train_batch_size"], learning_rate=step["learning_rate"]
    )
    optimizer.build(model.optimized_variables)
    convert.restore_optimizer_state(converted, optimizer)
    state = [*model.variables, *optimizer.variables]
    start = [v.numpy() for v in state]
    step_fn = tf.function(train.make_step_fn(model, optimizer))
    labels = batch["labels"].astype(np.int32)

    def take_step(perturb_seed=None):
        for variable, value in zip(state, start, strict=True):
            variable.assign(value)
        features = batch["features"]
        if perturb_seed is not None:
            features = _perturbed(features, perturb_seed)
        if config.train_mode == "pretrain":
            data = {"view1": features[..., :3], "view2": features[..., 3:], "label": labels}
        else:
            data = {"image": features, "label": labels}
        metrics = step_fn({k: tf.constant(v) for k, v in data.items()})
        weights = {w.path: w.numpy().astype(np.float64) for w in model.weights}
        slots = {
            w.path: optimizer.momentum_variable(w).numpy().astype(np.float64)
            for w in model.optimized_variables
        }
        return {k: float(v) for k, v in metrics.items()}, weights, slots

    return step, converted, take_step


@pytest.mark.parametrize("name", WITH_STEP)
def test_one_training_step_equals_the_reference(reference_fixtures, name):
    step, converted, take_step = _one_step_runner(reference_fixtures, name)
    metrics, weights, slots = take_step()
    expected = {"sup_loss": "sup_loss", "weight_decay_loss": "weight_decay_loss"}
    expected["loss"] = "total_loss"
    if "contrast_loss" in step:
        expected["contrastive_loss"] = "contrast_loss"
    for ours, theirs in expected.items():
        assert metrics[ours] == pytest.approx(step[theirs], rel=STEP_TOL), ours

    noise_w = dict.fromkeys(weights, 0.0)
    noise_s = dict.fromkeys(slots, 0.0)
    for seed in (1, 2):
        _, moved_w, moved_s = take_step(perturb_seed=seed)
        for k in noise_w:
            noise_w[k] = max(noise_w[k], float(np.abs(moved_w[k] - weights[k]).max()))
        for k in noise_s:
            noise_s[k] = max(noise_s[k], float(np.abs(moved_s[k] - slots[k]).max()))

    after = reference.read_source(os.path.join(reference_fixtures, name, "ckpt_after_step"))
    failures, strict_pass, checked = [], 0, 0
    trained_by_reference = set()
    for ours, ref in converted.pairs:
        variable = after.variables[ref]
        pairs = [(weights[ours], after.read(variable.key), noise_w[ours], "value")]
        if variable.slot_key:
            trained_by_reference.add(ours)
            pairs.append((slots[ours], after.read(variable.slot_key), noise_s[ours], "momentum"))
        for got, want, noise, what in pairs:
            diff = float(np.abs(got - want).max())
            strict = STEP_TOL * max(1.0, float(np.abs(want).max()))
            checked += 1
            strict_pass += diff <= strict
            if not diff <= strict + NOISE_FACTOR * noise:
                failures.append((ours, what, diff, strict, noise))
    # The same variables are trained (the reference has momentum slots for exactly those).
    assert trained_by_reference == set(slots)
    assert not failures, f"{len(failures)} of {checked} above tolerance, e.g. {failures[:5]}"
    # Where rounding does not decide, the strict tolerance holds: most variables meet it.
    assert strict_pass >= 0.6 * checked, (strict_pass, checked)


@pytest.mark.parametrize("name", WITH_STEP)
def test_lars_exclusions_match_the_reference_names(reference_fixtures, name):
    """The variables our LARS spares from weight decay and trust scaling are those whose
    reference names match the reference's exclusion list."""
    with open(os.path.join(reference_fixtures, name, "step.json"), encoding="utf-8") as f:
        exclusions = json.load(f)["lars_exclusions"]
    converted = convert.load_reference(os.path.join(reference_fixtures, name, "saved_model"))
    optimizer = factory.build_optimizer(converted.config, 8, learning_rate=0.1)
    optimizer.build(converted.model.optimized_variables)
    weights = {w.path: w for w in converted.model.weights}
    optimized = {id(v) for v in converted.model.optimized_variables}
    checked = 0
    for ours, ref in converted.pairs:
        weight = weights[ours]
        if id(weight) not in optimized:
            continue
        ref_name = converted.source.variables[ref].name
        excluded = any(pattern in ref_name for pattern in exclusions)
        assert optimizer.uses_weight_decay(weight) == (not excluded), (ours, ref_name)
        assert optimizer.uses_layer_adaptation(weight) == (not excluded), (ours, ref_name)
        checked += 1
    assert checked == len(converted.model.optimized_variables)
