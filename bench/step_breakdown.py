"""Where a training step's time goes, by ablation: the pieces of one recipe's step timed apart,
interleaved in one process.

    python bench/step_breakdown.py --recipe=cifar10_10min --dataset=/path/to/cifar10-jpeg
    python bench/step_breakdown.py --recipe=cifar10_paper --dataset=/path/to/cifar10-jpeg
    python bench/step_breakdown.py --rounds=2 --steps=3 -- --image_size=16   # a quick look

It assembles the network, optimizers and training pipeline exactly as `tf-simclr --mode=train`
does for the recipe (flags after `--` override it), then times, each as one `tf.function` call
per step on the same batch shapes:

- `forward`: the training objective's forward pass and loss (batch norm in training mode);
- `forward_backward`: the same, and the gradients of every trained variable;
- `step`: the whole training step (`SimCLRModel.training_step`: gradients and the optimizer
  updates, the online head's too) on a batch already in memory;
- `step_with_input`: the step on the next batch of the training pipeline, as training does, so
  the pipeline's work (decoding, augmentation) shares the cores with the step;
- `input_alone`: the training pipeline alone, a batch at a time, timed first (nothing else
  running; its first batches untimed).

Each round times `--steps` calls of each model piece, in turn; the medians over `--rounds` rounds give
backward = forward_backward - forward, optimizer = step - forward_backward, and the input
pipeline's cost on the critical path = step_with_input - step. It prints a table and writes
OUT/step_breakdown.json with the CPU model and the load average.

Then, unless --no_ops, it runs `step` a few more times under TensorFlow's profiler
(`tf.profiler.experimental`, no TensorBoard plugin needed) and splits the time the compute
threads spent in ops (an op event's own time, without the events nested in it) into
convolutions and batch norm, forward and backward, the other ops and the TF executor's own
work between ops: shares of the step's op time. (With oneDNN on, the profiler leaves the step's
time within a few percent of an unprofiled one here: 0.345 vs 0.34 s at width 0.125.)
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tf_simclr's default (tf_simclr/__init__.py), set before TensorFlow starts: without it, TF
# leaves oneDNN off on CPUs without AVX-512, and a width-0.125 step takes twice as long.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, ROOT)


def assembled_run(argv: list[str]):
    """The Config of `tf-simclr ARGV` and its assembled run (network, optimizers, pipeline)."""
    import tensorflow as tf

    from tf_simclr import cli
    from tf_simclr.workflows import train

    cli.FLAGS(["tf-simclr", *cli.expand_recipes(argv)])
    config = cli.config_from_flags()
    if config.train_mode == "distill":
        raise SystemExit("step_breakdown times pretraining and fine-tuning, not distillation.")
    train.setup_runtime(config)
    strategy = tf.distribute.get_strategy()
    plan = train.plan_run(config, strategy)
    return config, train.assemble(plan, strategy)


def timed_pieces(run, dataset):
    """{piece: a function that runs it once and blocks until it is done}."""
    import tensorflow as tf

    model, optimizer, head_optimizer = run.model, run.optimizer, run.head_optimizer
    batches = iter(dataset)
    fixed = next(batches)
    variables = list(model.optimized_variables)

    @tf.function
    def forward(batch):
        return model.compute_objective(batch, training=True).total

    @tf.function
    def forward_backward(batch):
        with tf.GradientTape() as tape:
            total = model.compute_objective(batch, training=True).total
        grads = tape.gradient(total, variables)
        return tf.add_n([tf.reduce_sum(g) for g in grads if g is not None])

    @tf.function
    def step(batch):
        return model.training_step(batch, optimizer, head_optimizer).total

    def block(value):
        return float(value.numpy())

    return {
        "forward": lambda: block(forward(fixed)),
        "forward_backward": lambda: block(forward_backward(fixed)),
        "step": lambda: block(step(fixed)),
        "step_with_input": lambda: block(step(next(batches))),
    }


def input_alone(dataset, batches: int) -> float:
    """Median seconds per batch of the training pipeline on its own (a fresh iterator, its
    first batches untimed), run before anything else so that nothing shares the cores."""
    iterator = iter(dataset)
    for _ in range(5):
        next(iterator)
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        next(iterator)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(pieces: dict, rounds: int, steps: int, settle_seconds: float = 3.0) -> dict:
    """{piece: [seconds per call, one median per round]}, the pieces interleaved round by
    round after one untimed call each (tracing). `step_with_input` runs 2 x `steps` calls and
    keeps the second half: the first ones take batches the pipeline made ahead while the
    other pieces ran. After it, `settle_seconds` let the pipeline fill its buffer again, so
    that its work does not land in the next round's other pieces."""
    for run_once in pieces.values():
        run_once()
    per_round = {name: [] for name in pieces}
    for index in range(rounds):
        time.sleep(settle_seconds)
        for name in pieces:
            calls = 2 * steps if name == "step_with_input" else steps
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                pieces[name]()
                times.append(time.perf_counter() - start)
            per_round[name].append(statistics.median(times[-steps:]))
        print(
            f"round {index + 1}/{rounds}: "
            + ", ".join(f"{n} {per_round[n][-1]:.3f} s" for n in pieces),
            flush=True,
        )
    return per_round


def breakdown(per_round: dict, input_seconds: float) -> dict:
    """Median seconds per step of each piece and of the differences between them."""
    med = {name: statistics.median(values) for name, values in per_round.items()}
    return {
        "forward": med["forward"],
        "backward": med["forward_backward"] - med["forward"],
        "optimizer": med["step"] - med["forward_backward"],
        "step": med["step"],
        "input_on_the_critical_path": med["step_with_input"] - med["step"],
        "step_with_input": med["step_with_input"],
        "input_alone": input_seconds,
    }


OP_CATEGORIES = [
    "convolution forward",
    "convolution backward: input gradients",
    "convolution backward: filter gradients",
    "batch norm forward",
    "batch norm backward",
    "other ops, forward and loss",
    "other ops, backward and optimizer",
    "TF executor between ops",
]


def op_type(event_name: str) -> str | None:
    """The op type of a TF op event ("scope/name:Conv2D" -> "Conv2D"); None for the runtime's
    own events ("ExecutorState::Process", "ParallelFor", ...)."""
    if ":" not in event_name or "::" in event_name:
        return None
    return event_name.rsplit(":", 1)[1] or None


def op_category(event_name: str | None) -> str:
    kind = op_type(event_name) if event_name else None
    if kind is None:
        return "TF executor between ops"
    if "Conv2DBackpropInput" in kind:
        return "convolution backward: input gradients"
    if "Conv2DBackpropFilter" in kind:
        return "convolution backward: filter gradients"
    if "Conv2D" in kind:
        return "convolution forward"
    if "FusedBatchNormGrad" in kind:
        return "batch norm backward"
    if "FusedBatchNorm" in kind:
        return "batch norm forward"
    if "gradient_tape" in event_name or "LARS" in event_name or "SGD" in event_name:
        return "other ops, backward and optimizer"
    return "other ops, forward and loss"


def own_times(events):
    """Yields (enclosing op event name or None, own picoseconds) for each of `events` =
    [(begin_ps, end_ps, name)] of one thread: its duration less that of the events nested in
    it, charged to the innermost op event around it (itself if it is one)."""
    stack = []  # [end, name, nested duration, op name it is charged to]
    for begin, end, name in sorted(events, key=lambda e: (e[0], -e[1])):
        while stack and stack[-1][0] <= begin:
            done = stack.pop()
            yield done[3], done[0] - done[4] - done[2]
        charged = name if op_type(name) else (stack[-1][3] if stack else None)
        if stack:
            stack[-1][2] += end - begin
        stack.append([end, name, 0, charged, begin])
    while stack:
        done = stack.pop()
        yield done[3], done[0] - done[4] - done[2]


def op_shares(xplane_path: str) -> dict:
    """{category: share of the compute threads' time} in the trace at `xplane_path` (the
    inter-op threads "tf_Compute" and the intra-op pool that runs oneDNN's and Eigen's work)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    (host,) = [plane for plane in space.planes if plane.name == "/host:CPU"]
    seconds = collections.Counter()
    for line in host.lines:
        if not line.name.startswith(("tf_Compute", "tf_numa")):
            continue
        events = [
            (e.offset_ps, e.offset_ps + e.duration_ps, host.event_metadata[e.metadata_id].name)
            for e in line.events
        ]
        for charged, own in own_times(events):
            seconds[op_category(charged)] += own / 1e12
    total = sum(seconds.values())
    if not total:
        raise SystemExit(f"{xplane_path} holds no op events of the compute threads.")
    return {name: seconds.get(name, 0.0) / total for name in OP_CATEGORIES}


def profiled_op_shares(run_step, calls: int, trace_dir: str) -> dict:
    """Runs `run_step` `calls` times under TensorFlow's profiler; `op_shares` of its trace."""
    import tensorflow as tf

    tf.profiler.experimental.start(trace_dir)
    try:
        for _ in range(calls):
            run_step()
    finally:
        tf.profiler.experimental.stop()
    traces = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.xplane.pb")))
    if not traces:
        raise SystemExit(f"The profiler wrote no trace under {trace_dir}.")
    return op_shares(traces[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="cifar10_10min")
    parser.add_argument("--dataset", default="embedded")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="calls of each piece a round")
    parser.add_argument("--no_ops", action="store_true", help="skip the profiled op split")
    parser.add_argument("--out", default=None, help="folder for the JSON (default: a temp one)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    from default_run import cpu_model

    out = args.out or tempfile.mkdtemp(prefix="tf_simclr_step_breakdown_")
    os.makedirs(out, exist_ok=True)
    argv = [
        f"--recipe={args.recipe}",
        f"--dataset={args.dataset}",
        "--mode=train",
        f"--model_dir={os.path.join(out, 'run')}",  # nothing is written there
        *extra,
    ]
    config, run = assembled_run(argv)
    from tf_simclr import factory

    dataset = factory.training_dataset_fn(config, config.train_batch_size)(None)
    input_seconds = input_alone(dataset, batches=4 * args.steps)
    print(f"input alone: {input_seconds:.3f} s per batch", flush=True)
    pieces = timed_pieces(run, dataset)
    per_round = measure(pieces, args.rounds, args.steps)
    seconds = breakdown(per_round, input_seconds)
    shares = None
    if not args.no_ops:
        shares = profiled_op_shares(pieces["step"], args.steps, os.path.join(out, "trace"))
    result = {
        "flags": argv,
        "train_batch_size": config.train_batch_size,
        "seconds_per_step": seconds,
        "op_shares_of_the_step": shares,
        "per_round": per_round,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "cpu": cpu_model(),
        "load_average_1min": os.getloadavg()[0],
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    with open(os.path.join(out, "step_breakdown.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    total = seconds["step_with_input"]
    print(
        f"\n{args.recipe} {' '.join(extra)} | {result['cpu']} | load {result['load_average_1min']:.2f}"
    )
    print(f"{'seconds per step':>18}  share of a training step  part")
    for name in ("forward", "backward", "optimizer", "input_on_the_critical_path"):
        print(f"{seconds[name]:18.4f}  {100 * seconds[name] / total:5.1f}%  {name}")
    print(f"{total:18.4f}  100.0%  step_with_input (a training step, as training runs it)")
    print(
        f"{seconds['input_alone']:18.4f}          input_alone (the pipeline with the cores to itself)"
    )
    if shares:
        print(f"\nthe step's op time ({seconds['step']:.4f} s a step), by kind of op:")
        for name, share in shares.items():
            print(f"{share * seconds['step']:18.4f}  {100 * share:5.1f}%  {name}")
    print(f"written: {os.path.join(out, 'step_breakdown.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
