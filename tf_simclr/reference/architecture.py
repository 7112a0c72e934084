"""The reference network in tf_simclr's terms, read from its variables' places and shapes."""

from __future__ import annotations

import dataclasses
import re

from tf_simclr.network.resnet import RESNET_LAYERS
from tf_simclr.reference.files import ReferenceFormatError, ReferenceSource

SK_MIN_DIM = 32  # the reference's SK_Conv2D min_dim


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
    found = {}  # each _infer_* step records here how it found its part
    depth = _infer_depth(source, found)
    width, cifar, resnet_d = _infer_stem(source.variables, found)
    sk_ratio = _infer_selective_kernels(source, resnet_d, found)
    num_layers, out_dim = _infer_projection_head(source, found)
    num_classes, selector, train_mode = _infer_supervised_head(source, num_layers, found)
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


def _infer_depth(source: ReferenceSource, found: dict) -> int:
    """The ResNet depth whose block kind and blocks per group the source has."""
    v = source.variables
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
    return depth


def _infer_stem(v, found: dict) -> tuple[float, bool, bool]:
    """(width_multiplier, cifar_stem, resnet_d) from the stem's convolutions."""
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
    found["width_multiplier"] = f"stem has {channels} channels"
    return channels / 64.0, cifar, resnet_d


def _infer_selective_kernels(source: ReferenceSource, resnet_d: bool, found: dict) -> float:
    """sk_ratio (0 without selective kernels, which the reference pairs with the ResNet-D stem)."""
    v = source.variables
    sk_paths = [p for p in v if "/conv_relu_dropblock_layers/3/conv2d_0/kernel" in p]
    if sk_paths:
        sk_ratio = _infer_sk_ratio(v, sk_paths)
        found["sk_ratio"] = "selective-kernel layers' mixing widths"
        return sk_ratio
    if resnet_d:
        raise ReferenceFormatError(
            f"{source.path}: a ResNet-D stem without selective-kernel layers is not a network "
            "the reference code builds."
        )
    return 0.0


def _infer_projection_head(source: ReferenceSource, found: dict) -> tuple[int, int]:
    """(number of dense layers, output width); (0, 128) when the source has no head."""
    v = source.variables
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
    return num_layers, out_dim


def _infer_supervised_head(
    source: ReferenceSource, num_layers: int, found: dict
) -> tuple[int | None, int, str]:
    """(num_classes or None, ft_proj_selector, train_mode) of the supervised head."""
    v = source.variables
    head_kernel = "supervised_head/linear_layer/dense/kernel"
    if head_kernel in v:
        in_dim, num_classes = v[head_kernel].shape
        selector, train_mode, how = _head_placement(source, num_layers, in_dim)
        found["supervised head"] = how
        return num_classes, selector, train_mode
    if not num_layers:
        raise ReferenceFormatError(
            f"{source.path}: neither a projection head nor a supervised head; an encoder alone "
            "is not a reference SimCLR model."
        )
    return None, 0, "pretrain"


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
