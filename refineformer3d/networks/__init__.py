"""Networks of RefineFormer3D: the 3D Mix Transformer encoder, SegFormer3D, RefineFormer3D and the
slice-wise 2-D SegFormer (Hugging Face), and their registry.

Example:
    >>> from refineformer3d.networks import RefineFormer3D, create_model, list_models
    >>> net = RefineFormer3D(in_channels=4, out_channels=3)          # the "small" variant
    >>> tiny = create_model("refineformer3d_tiny", in_channels=4, out_channels=3)
"""

from refineformer3d.networks.base import MixTransformerSegNet3D
from refineformer3d.networks.blocks import (
    AxialAttention3D,
    Conv2Plus1d,
    EfficientSelfAttention3D,
    GhostConv3d,
    GlobalFilter3D,
    LowRankLinear,
    MixFFN3D,
    MixTransformerBlock3D,
    OverlapPatchEmbed3D,
)
from refineformer3d.networks.checkpoints import regions_from_classes
from refineformer3d.networks.encoder import MixTransformerStage3D, MixVisionTransformer3D
from refineformer3d.networks.heads import GatedFusion3D, RefineHead3D, SegFormerHead3D
from refineformer3d.networks.refineformer3d import REFINEFORMER3D_VARIANTS, RefineFormer3D
from refineformer3d.networks.registry import create_model, is_model, list_models, register_model
from refineformer3d.networks.segformer2d import SEGFORMER2D_VARIANTS, SegFormer2D
from refineformer3d.networks.segformer3d import SegFormer3D

__all__ = [
    "regions_from_classes",
    "RefineFormer3D",
    "SegFormer3D",
    "SegFormer2D",
    "SEGFORMER2D_VARIANTS",
    "MixVisionTransformer3D",
    "MixTransformerStage3D",
    "MixTransformerSegNet3D",
    "REFINEFORMER3D_VARIANTS",
    "register_model",
    "create_model",
    "list_models",
    "is_model",
    "OverlapPatchEmbed3D",
    "GhostConv3d",
    "LowRankLinear",
    "EfficientSelfAttention3D",
    "GlobalFilter3D",
    "AxialAttention3D",
    "Conv2Plus1d",
    "MixFFN3D",
    "MixTransformerBlock3D",
    "SegFormerHead3D",
    "RefineHead3D",
    "GatedFusion3D",
]
