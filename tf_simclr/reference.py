"""Read models written by the reference SimCLR TF2 code (google-research/simclr, ``tf2/``) as data.

Two formats, both holding the reference's Keras attribute tree:

* its SavedModel export (``build_saved_model``; every published SimCLR v1/v2 model): the
  variables live in ``saved_model/variables/variables``, a checkpoint whose object graph names
  each variable's place in the model (``model/resnet_model/block_groups/0/layers/1/...``);
* its training checkpoints ``ckpt-N`` (``tf.train.Checkpoint(model, global_step, optimizer)``),
  which add the LARS momentum slots and the step.

Nothing here runs the SavedModel's program: the object graph and the saved function graphs are
parsed as protocol buffers, the values are read with ``tf.train.load_checkpoint``. From the
variables' places and shapes :func:`infer_architecture` finds the network (depth, width,
selective kernels, stem, projection head, classes, where the supervised head sits) and
:func:`weight_mapping` pairs every reference variable with a tf_simclr weight path.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections import deque

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2, trackable_object_graph_pb2

from tf_simclr.resnet import RESNET_LAYERS

# Object-graph edges that only alias variables reached through the model's own attributes.
_ALIAS_EDGES = frozenset(
    {
        "variables",
        "trainable_variables",
        "non_trainable_variables",
        "trainable_weights",
        "non_trainable_weights",
        "keras_api",
        "trainable_variables_list",
        "regularization_losses",
        "signatures",
    }
)
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_BN_PARTS = ("gamma", "beta", "moving_mean", "moving_variance")
SK_MIN_DIM = 32  # the reference's SK_Conv2D min_dim


class ReferenceFormatError(ValueError):
    """The source is not a model of the reference code, or cannot be placed in tf_simclr."""


@dataclasses.dataclass(frozen=True)
class ReferenceVariable:
    """One variable of the reference model: its checkpoint key, shape and optimizer slot."""

    path: str  # attribute path below the model object, e.g. "resnet_model/block_groups/0/..."
    key: str  # key in the checkpoint file
    shape: tuple[int, ...]
    slot_key: str | None = None  # the LARS "Momentum" slot, in training checkpoints
    name: str | None = None  # the variable's TF name (SavedModels only), e.g. ".../gamma"


@dataclasses.dataclass
class ReferenceSource:
    """A reference model found at a path, read as data (values are read on demand)."""

    kind: str  # "saved_model" or "checkpoint"
    path: str  # what the user gave
    prefix: str  # the checkpoint prefix holding the values
    variables: dict[str, ReferenceVariable]
    global_step: int | None
    graph_hints: dict  # from the SavedModel's function graphs: {"ft_proj_selector", "pretrain"}

    def read(self, key: str) -> np.ndarray:
        """The value stored under `key`; a damaged file raises ReferenceFormatError naming it."""
        try:
            return np.asarray(_reader(self.prefix).get_tensor(key))
        except (tf.errors.OpError, IndexError, ValueError) as err:
            raise ReferenceFormatError(
                f"{self.path}: the variables file cannot be read ({_first_line(err)}) while "
                f"reading {key!r}. It is truncated or damaged: download or copy it again."
            ) from err

    @property
    def has_slots(self) -> bool:
        return any(v.slot_key for v in self.variables.values())


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _reader(prefix: str):
    return tf.train.load_checkpoint(prefix)


# ----------------------------------------------------------------------------- locating
def _checkpoint_prefixes(directory: str) -> list[str]:
    found = []
    for index in glob.glob(os.path.join(glob.escape(directory), "*.index")):
        match = re.search(r"-(\d+)\.index$", index)
        if match:
            found.append((int(match.group(1)), index[: -len(".index")]))
    return [p for _, p in sorted(found)]


def locate(path: str) -> tuple[str, str]:
    """("saved_model" | "checkpoint", checkpoint prefix) for a SavedModel directory, a
    checkpoint prefix or a directory holding ``ckpt-N`` files (the newest is taken)."""
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb")):
        prefix = os.path.join(path, "variables", "variables")
        if not os.path.isfile(prefix + ".index"):
            raise ReferenceFormatError(
                f"{path} has a saved_model.pb but no variables/variables.index: the SavedModel "
                "is incomplete (copy its variables/ folder too)."
            )
        return "saved_model", prefix
    if os.path.isfile(path + ".index"):
        return "checkpoint", path
    if os.path.isdir(path):
        prefixes = _checkpoint_prefixes(path)
        if prefixes:
            return "checkpoint", prefixes[-1]
        if os.path.isdir(os.path.join(path, "saved_model")):
            raise ReferenceFormatError(
                f"{path} is not a SavedModel itself; did you mean {os.path.join(path, 'saved_model')}?"
            )
        raise ReferenceFormatError(
            f"{path} is neither a reference SavedModel (a directory with saved_model.pb and "
            "variables/) nor a training checkpoint (a ckpt-N prefix, or a directory holding "
            "ckpt-N.index files)."
        )
    if not os.path.exists(path):
        raise ReferenceFormatError(f"{path} does not exist.")
    raise ReferenceFormatError(
        f"{path} is a file, not a reference model: give the SavedModel directory, a checkpoint "
        "prefix such as model_dir/ckpt-1000 (without .index), or the directory holding it."
    )


# ------------------------------------------------------------------------- object graph
def _object_graph(prefix: str, source: str):
    try:
        reader = _reader(prefix)
    except (tf.errors.OpError, ValueError) as err:
        raise ReferenceFormatError(
            f"{source}: the checkpoint index cannot be read ({_first_line(err)}); the files are "
            "damaged or not a TensorFlow checkpoint."
        ) from err
    if not reader.has_tensor(_OBJECT_GRAPH_KEY):
        raise ReferenceFormatError(
            f"{source} is a name-based (TF1) checkpoint without an object graph; only the TF2 "
            "reference code's SavedModels and checkpoints can be read."
        )
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    try:
        graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
    except (tf.errors.OpError, IndexError, ValueError) as err:
        raise ReferenceFormatError(
            f"{source}: the variables file cannot be read ({_first_line(err)}). It is truncated "
            "or damaged: download or copy it again."
        ) from err
    return reader, graph


def _attribute_paths(graph) -> dict[int, str]:
    """{node id: attribute path from the root} along the objects' own attributes (aliases such
    as ``variables`` or ``keras_api`` skipped); the first (shortest) path wins."""
    paths = {0: ""}
    queue = deque([0])
    while queue:
        node_id = queue.popleft()
        for child in graph.nodes[node_id].children:
            if child.local_name in _ALIAS_EDGES or child.node_id in paths:
                continue
            base = paths[node_id]
            paths[child.node_id] = f"{base}/{child.local_name}" if base else child.local_name
            queue.append(child.node_id)
    return paths


def _model_root(paths: dict[int, str], graph) -> str:
    """The attribute path of the reference Model object (the one holding ``resnet_model``)."""
    for node_id, path in sorted(paths.items(), key=lambda item: len(item[1])):
        names = {c.local_name for c in graph.nodes[node_id].children}
        if "resnet_model" in names:
            return path
    raise ReferenceFormatError(
        "it holds no 'resnet_model': it is not a model of the reference SimCLR code (other "
        "networks cannot be converted)."
    )


def _variable_value_key(node) -> str | None:
    for attribute in node.attributes:
        if attribute.name == "VARIABLE_VALUE":
            return attribute.checkpoint_key
    return None


def read_source(path: str) -> ReferenceSource:
    """Read the reference model at `path` (SavedModel dir, ``ckpt-N`` prefix or its directory)."""
    kind, prefix = locate(path)
    reader, graph = _object_graph(prefix, path)
    shapes = reader.get_variable_to_shape_map()
    paths = _attribute_paths(graph)
    try:
        root = _model_root(paths, graph)
    except ReferenceFormatError as err:
        raise ReferenceFormatError(f"{path}: {err}") from None
    slots = {}
    for node in graph.nodes:
        for slot in node.slot_variables:
            if slot.slot_name == "momentum" or slot.slot_name.lower() == "momentum":
                key = _variable_value_key(graph.nodes[slot.slot_variable_node_id])
                if key:
                    slots[slot.original_variable_node_id] = key
    variables = {}
    step = None
    for node_id, node in enumerate(graph.nodes):
        key = _variable_value_key(node)
        if key is None or node_id not in paths:
            continue
        attr_path = paths[node_id]
        if attr_path == "global_step":
            step = int(reader.get_tensor(key))
            continue
        if root and not attr_path.startswith(root + "/"):
            continue  # optimizer bookkeeping, save counters
        rel = attr_path[len(root) + 1 :] if root else attr_path
        if key not in shapes:
            raise ReferenceFormatError(
                f"{path}: the object graph lists {rel} but the variables file does not hold it "
                f"({key}); the files are damaged or from two different models."
            )
        variables[rel] = ReferenceVariable(rel, key, tuple(shapes[key]), slots.get(node_id))
    if not variables:
        raise ReferenceFormatError(f"{path}: the reference model holds no variables.")
    hints = {}
    if kind == "saved_model":
        saved = _parse_saved_model(os.path.join(os.path.expanduser(path), "saved_model.pb"))
        hints = _graph_hints(saved)
        names = _variable_names(saved)
        by_key = {v.key: rel for rel, v in variables.items()}
        for node_id, node in enumerate(graph.nodes):
            key = _variable_value_key(node)
            if key in by_key and node_id in names:
                rel = by_key[key]
                variables[rel] = dataclasses.replace(variables[rel], name=names[node_id])
    return ReferenceSource(kind, path, prefix, variables, step, hints)


def _parse_saved_model(pb_path: str):
    try:
        with open(pb_path, "rb") as f:
            return saved_model_pb2.SavedModel.FromString(f.read())
    except (OSError, ValueError, DecodeError) as err:
        raise ReferenceFormatError(
            f"{pb_path} cannot be parsed as a SavedModel ({_first_line(err)}): it is damaged."
        ) from err


def _variable_names(saved) -> dict[int, str]:
    """{node id: variable name} from the SavedModel's object graph (same node ids as the
    object graph stored with its variables)."""
    names = {}
    for meta_graph in saved.meta_graphs[:1]:
        for node_id, node in enumerate(meta_graph.object_graph_def.nodes):
            if node.WhichOneof("kind") == "variable":
                names[node_id] = node.variable.name
    return names


# --------------------------------------------------------------------- function graphs
def _graph_hints(saved) -> dict:
    """Where the supervised head sits, read from the saved ``__call__`` graphs as data.

    The reference names its ops after its layers: the supervised head's MatMul
    (``head_supervised/.../MatMul``) is fed either through a StopGradient (pretraining with a
    linear-eval head) or through k projection-head layers (fine-tuned from head layer k).
    Returns {} when the graphs do not tell (other names), so shapes decide instead.
    """
    found = set()
    for meta_graph in saved.meta_graphs:
        for function in meta_graph.graph_def.library.function:
            nodes = {n.name: n for n in function.node_def}
            heads = [
                n
                for n in function.node_def
                if n.op == "MatMul" and n.name.startswith("head_supervised/")
            ]
            for head in heads:
                hint = _trace_head_input(nodes, head)
                if hint is not None:
                    found.add(hint)
    if len(found) != 1:
        return {}
    selector, stop_gradient = found.pop()
    return {"ft_proj_selector": selector, "pretrain": stop_gradient}


def _trace_head_input(nodes: dict, head) -> tuple[int, bool] | None:
    """(projection-head layers between proj_head_input and the head, StopGradient on the way)."""
    start = head.input[0].split(":")[0].lstrip("^")
    seen, queue = set(), deque([start])
    matmuls, stop_gradient, reached = set(), False, False
    while queue:
        name = queue.popleft()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        node = nodes[name]
        if name.endswith("proj_head_input"):
            reached = True
            continue
        if node.op == "StopGradient":
            stop_gradient = True
        if node.op == "MatMul" and name.startswith("projection_head/"):
            matmuls.add(name)
        if node.op in ("ReadVariableOp", "Const", "Placeholder"):
            continue
        for inp in node.input:
            if not inp.startswith("^"):
                queue.append(inp.split(":")[0])
    if not reached:
        return None
    return len(matmuls), stop_gradient


# ------------------------------------------------------------------------ architecture
@dataclasses.dataclass
class Architecture:
    """A reference network in tf_simclr's terms, with how each part was found."""

    resnet_depth: int
    width_multiplier: float
    sk_ratio: float
    cifar_stem: bool
    proj_head_mode: str  # "nonlinear" or "none"
    num_proj_layers: int
    proj_out_dim: int
    num_classes: int | None
    ft_proj_selector: int
    train_mode: str  # "pretrain" or "finetune"
    found: dict[str, str] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        sk = f", selective kernels (sk_ratio {self.sk_ratio:g})" if self.sk_ratio else ""
        stem = "CIFAR stem (3x3/1, no max-pool)" if self.cifar_stem else "ImageNet stem"
        if self.proj_head_mode == "none":
            head = "no projection head"
        else:
            head = f"{self.num_proj_layers}-layer projection head to {self.proj_out_dim}"
        if self.num_classes:
            where = (
                "h (final_avg_pool)"
                if self.ft_proj_selector == 0
                else f"projection-head layer {self.ft_proj_selector}"
            )
            sup = f", supervised head of {self.num_classes} classes on {where}"
        else:
            sup = ", no supervised head"
        return (
            f"ResNet-{self.resnet_depth} width {self.width_multiplier:g}{sk}, {stem}, {head}"
            f"{sup}; {self.train_mode}"
        )


def _blocks_per_group(variables) -> list[int]:
    counts = [0, 0, 0, 0]
    for path in variables:
        match = re.match(r"resnet_model/block_groups/(\d+)/layers/(\d+)/", path)
        if match:
            g, b = int(match.group(1)), int(match.group(2))
            if g > 3:
                raise ReferenceFormatError(f"cannot place {path}: a ResNet has 4 block groups.")
            counts[g] = max(counts[g], b + 1)
    return counts


def _shape(variables, path) -> tuple[int, ...]:
    if path not in variables:
        raise ReferenceFormatError(f"the source lacks {path}, which every such network has.")
    return variables[path].shape


def infer_architecture(source: ReferenceSource) -> Architecture:
    """The reference network of `source`, read from its variables' places and shapes."""
    v = source.variables
    found = {}
    blocks = tuple(_blocks_per_group(v))
    bottleneck = any("/conv_relu_dropblock_layers/" in p for p in v)
    depth = next(
        (d for d, (b, layout) in RESNET_LAYERS.items() if b == bottleneck and layout == blocks),
        None,
    )
    if depth is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise ReferenceFormatError(
            f"{source.path}: {kind} blocks per group {list(blocks)} match no ResNet depth "
            f"({', '.join(str(d) for d in RESNET_LAYERS)})."
        )
    found["resnet_depth"] = f"{list(blocks)} {'bottleneck' if bottleneck else 'basic'} blocks"

    stem = "resnet_model/initial_conv_relu_max_pool"
    first = _shape(v, f"{stem}/0/conv2d/kernel")
    resnet_d = f"{stem}/4/conv2d/kernel" in v
    if resnet_d:
        channels = _shape(v, f"{stem}/4/conv2d/kernel")[-1]
        cifar = False
        found["stem"] = "three 3x3 convs (ResNet-D)"
    else:
        channels = first[-1]
        cifar = first[0] == 3
        found["stem"] = f"{first[0]}x{first[1]} conv" + (" (CIFAR)" if cifar else "")
    width = channels / 64.0
    found["width_multiplier"] = f"stem has {channels} channels"

    sk_paths = [p for p in v if "/conv_relu_dropblock_layers/3/conv2d_0/kernel" in p]
    sk_ratio = 0.0
    if sk_paths:
        sk_ratio = _infer_sk_ratio(v, sk_paths)
        found["sk_ratio"] = "selective-kernel layers' mixing widths"
    elif resnet_d:
        raise ReferenceFormatError(
            f"{source.path}: a ResNet-D stem without selective-kernel layers is not a network "
            "the reference code builds."
        )

    head_layers = sorted(
        {
            int(m.group(1))
            for p in v
            if (m := re.match(r"_projection_head/linear_layers/(\d+)/dense/kernel$", p))
        }
    )
    if head_layers and head_layers != list(range(len(head_layers))):
        raise ReferenceFormatError(
            f"{source.path}: projection-head layers {head_layers} have gaps."
        )
    num_layers = len(head_layers)
    if num_layers:
        out_dim = v[f"_projection_head/linear_layers/{num_layers - 1}/dense/kernel"].shape[-1]
        found["projection head"] = f"{num_layers} dense layers"
    else:
        out_dim = 128
        found["projection head"] = "none in the source"

    num_classes = None
    selector, train_mode = 0, "pretrain"
    head_kernel = "supervised_head/linear_layer/dense/kernel"
    if head_kernel in v:
        in_dim, num_classes = v[head_kernel].shape
        selector, train_mode, how = _head_placement(source, num_layers, in_dim)
        found["supervised head"] = how
    elif not num_layers:
        raise ReferenceFormatError(
            f"{source.path}: neither a projection head nor a supervised head; an encoder alone "
            "is not a reference SimCLR model."
        )
    return Architecture(
        resnet_depth=depth,
        width_multiplier=width,
        sk_ratio=sk_ratio,
        cifar_stem=cifar,
        proj_head_mode="nonlinear" if num_layers else "none",
        num_proj_layers=num_layers,
        proj_out_dim=int(out_dim),
        num_classes=int(num_classes) if num_classes else None,
        ft_proj_selector=selector,
        train_mode=train_mode,
        found=found,
    )


def _infer_sk_ratio(v, sk_paths) -> float:
    """sk_ratio from the SK mixing widths mid = max(int(filters * sk_ratio), 32)."""
    pairs = []
    for p in sk_paths:
        reduce_in, mid = v[p].shape[2], v[p].shape[3]
        pairs.append((reduce_in, mid))  # reduce_in = the block's filters
    for candidate in (0.0625,) + tuple(sorted({m / f for f, m in pairs if m > SK_MIN_DIM})):
        if all(max(int(f * candidate), SK_MIN_DIM) == m for f, m in pairs):
            return candidate
    raise ReferenceFormatError(
        f"the selective-kernel widths {sorted(set(pairs))} fit no single sk_ratio."
    )


def _head_placement(source, num_layers, in_dim) -> tuple[int, str, str]:
    """(ft_proj_selector, train_mode, explanation) for the supervised head."""
    v = source.variables
    widths = [_encoder_width(v)]
    if num_layers:
        widths += [
            v[f"_projection_head/linear_layers/{j}/dense/kernel"].shape[-1]
            for j in range(num_layers)
        ]
    fits = [k for k, w in enumerate(widths) if w == in_dim]
    if not fits:
        raise ReferenceFormatError(
            f"{source.path}: the supervised head takes {in_dim} features, which no layer gives "
            f"(widths {widths})."
        )
    hints = source.graph_hints
    if "ft_proj_selector" in hints and hints["ft_proj_selector"] in fits:
        k = hints["ft_proj_selector"]
        mode = "pretrain" if hints["pretrain"] else "finetune"
        how = "the SavedModel's graph" + (
            " (stop_gradient: a linear-eval head)" if hints["pretrain"] else ""
        )
        return k, mode, f"on hidden {k}, from {how}"
    if source.has_slots and num_layers:
        # Fine-tuning trains the head layers below the selector only; they alone have slots.
        with_slots = [
            j
            for j in range(num_layers)
            if v[f"_projection_head/linear_layers/{j}/dense/kernel"].slot_key
        ]
        if len(with_slots) < num_layers:
            k = len(with_slots)
            if with_slots == list(range(k)) and k in fits:
                return k, "finetune", f"on hidden {k}: only head layers < {k} were trained"
        else:
            return fits[0], "pretrain", f"on hidden {fits[0]}: every head layer was trained"
    if source.has_slots and not num_layers:
        return 0, "finetune", "on h: a classifier without projection head"
    mode = "finetune" if not num_layers else "pretrain"
    how = f"on hidden {fits[0]} (the first layer of width {in_dim})"
    if len(fits) > 1:
        how += f"; layers {fits} have that width and nothing else tells them apart"
    return fits[0], mode, how


def _encoder_width(v) -> int:
    """Channels of h: the widest batch norm of the last block group (its output layers)."""
    return max(
        var.shape[0]
        for p, var in v.items()
        if p.startswith("resnet_model/block_groups/3/") and p.endswith("/gamma")
    )


# ----------------------------------------------------------------------------- mapping
def _bn(ref: str, ours: str, center: bool = True) -> list[tuple[str, str]]:
    parts = _BN_PARTS if center else ("gamma", "moving_mean", "moving_variance")
    return [(f"{ours}/{p}", f"{ref}/{p}") for p in parts]


def _conv(ref: str, ours: str) -> list[tuple[str, str]]:
    return [(f"{ours}/kernel", f"{ref}/kernel")]


def _shortcut(ref: str, ours: str, sk: bool, strided: bool) -> list[tuple[str, str]]:
    # Reference ResNet-D shortcut list: [FixedPadding (strided only), AvgPool, conv, BN].
    conv_index = (2 if strided else 1) if sk else 0
    return _conv(f"{ref}/{conv_index}/conv2d", f"{ours}/shortcut_conv/conv2d") + _bn(
        f"{ref}/{conv_index + 1}/bn", f"{ours}/shortcut_batch_normalization"
    )


def weight_mapping(arch: Architecture, model_name: str = "simclr") -> list[tuple[str, str]]:
    """[(tf_simclr weight path, reference attribute path)] for every weight of the network."""
    pairs = []
    stem = "resnet_model/initial_conv_relu_max_pool"
    if arch.sk_ratio and not arch.cifar_stem:
        pairs += _conv(f"{stem}/0/conv2d", "initial_conv/conv1/conv2d")
        pairs += _bn(f"{stem}/1/bn", "initial_conv/bn1_batch_normalization")
        pairs += _conv(f"{stem}/2/conv2d", "initial_conv/conv2/conv2d")
        pairs += _bn(f"{stem}/3/bn", "initial_conv/bn2_batch_normalization")
        pairs += _conv(f"{stem}/4/conv2d", "initial_conv/conv3/conv2d")
        pairs += _bn(f"{stem}/6/bn", "initial_max_pool/stem_batch_normalization")
    else:
        pairs += _conv(f"{stem}/0/conv2d", "initial_conv/conv/conv2d")
        pairs += _bn(f"{stem}/2/bn", "initial_max_pool/stem_batch_normalization")
    bottleneck, blocks = RESNET_LAYERS[arch.resnet_depth]
    sk = arch.sk_ratio > 0
    for g, n in enumerate(blocks):
        for b in range(n):
            ref = f"resnet_model/block_groups/{g}/layers/{b}"
            ours = f"block_group{g + 1}/block_{b}"
            if bottleneck:
                layers = f"{ref}/conv_relu_dropblock_layers"
                pairs += _conv(f"{layers}/0/conv2d", f"{ours}/conv1/conv2d")
                pairs += _bn(f"{layers}/1/bn", f"{ours}/bn1_batch_normalization")
                if sk:
                    skl, sko = f"{layers}/3", f"{ours}/sk2"
                    pairs += _conv(f"{skl}/conv2d_fixed_padding/conv2d", f"{sko}/sk_conv/conv2d")
                    pairs += _bn(f"{skl}/batch_norm_relu/bn", f"{sko}/sk_batch_normalization")
                    pairs += _conv(f"{skl}/conv2d_0", f"{sko}/sk_reduce")
                    pairs += _bn(
                        f"{skl}/batch_norm_relu_1/bn", f"{sko}/sk_reduce_batch_normalization"
                    )
                    pairs += _conv(f"{skl}/conv2d_1", f"{sko}/sk_expand")
                    pairs += _conv(f"{layers}/5/conv2d", f"{ours}/conv3/conv2d")
                    pairs += _bn(f"{layers}/6/bn", f"{ours}/bn3_batch_normalization")
                else:
                    pairs += _conv(f"{layers}/3/conv2d", f"{ours}/conv2/conv2d")
                    pairs += _bn(f"{layers}/4/bn", f"{ours}/bn2_batch_normalization")
                    pairs += _conv(f"{layers}/6/conv2d", f"{ours}/conv3/conv2d")
                    pairs += _bn(f"{layers}/7/bn", f"{ours}/bn3_batch_normalization")
                if b == 0:
                    pairs += _shortcut(f"{ref}/projection_layers", ours, sk, g > 0)
            else:
                layers = f"{ref}/conv2d_bn_layers"
                pairs += _conv(f"{layers}/0/conv2d", f"{ours}/conv1/conv2d")
                pairs += _bn(f"{layers}/1/bn", f"{ours}/bn1_batch_normalization")
                pairs += _conv(f"{layers}/2/conv2d", f"{ours}/conv2/conv2d")
                pairs += _bn(f"{layers}/3/bn", f"{ours}/bn2_batch_normalization")
                if b == 0:
                    pairs += _shortcut(f"{ref}/shortcut_layers", ours, sk, g > 0)
    for j in range(arch.num_proj_layers):
        last = j == arch.num_proj_layers - 1
        ref = f"_projection_head/linear_layers/{j}"
        ours = f"{model_name}/projection_head/nl_{j}"
        pairs += _conv(f"{ref}/dense", f"{ours}_dense")
        pairs += _bn(f"{ref}/bn_relu/bn", f"{ours}_batch_normalization", center=not last)
    if arch.num_classes:
        ref = "supervised_head/linear_layer/dense"
        ours = f"{model_name}/head_supervised"
        pairs += [(f"{ours}/kernel", f"{ref}/kernel"), (f"{ours}/bias", f"{ref}/bias")]
    return pairs


def check_mapping(source: ReferenceSource, pairs: list[tuple[str, str]]) -> None:
    """Every source variable is placed and every expected one is present, or an error names it."""
    expected = {ref for _, ref in pairs}
    unplaced = sorted(set(source.variables) - expected)
    if unplaced:
        more = f" (and {len(unplaced) - 1} more)" if len(unplaced) > 1 else ""
        raise ReferenceFormatError(
            f"{source.path}: cannot place the variable {unplaced[0]}{more} in a tf_simclr "
            "network: the source has layers this converter does not know (squeeze-excitation, "
            "or a network that is not the reference SimCLR ResNet)."
        )
    missing = [ref for _, ref in pairs if ref not in source.variables]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ReferenceFormatError(
            f"{source.path}: the variable {missing[0]}{more} is missing: the source is "
            "incomplete or damaged (a network with these layers needs it)."
        )
