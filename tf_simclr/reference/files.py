"""Reading the reference's SavedModels and training checkpoints as data: where the values are,
each variable's place in the reference model's attribute tree, its optimizer slot, the step,
and what the saved graphs say about the supervised head. Nothing of the source is run."""

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
