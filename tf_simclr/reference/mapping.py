"""Each tf_simclr weight path and the reference attribute path of the variable it comes from."""

from __future__ import annotations

from tf_simclr.network.resnet import RESNET_LAYERS
from tf_simclr.reference.architecture import Architecture
from tf_simclr.reference.files import ReferenceFormatError, ReferenceSource

_BN_PARTS = ("gamma", "beta", "moving_mean", "moving_variance")


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
