"""RefineFormer3D: a parameter-efficient 3D Mix Transformer with a top-down refine decoder.

SegFormer3D predicts at 1/4 resolution and upsamples its logits trilinearly by 4, which blurs small lesions and
tumour boundaries; its 1024 -> 256 fusion at 1/4 resolution is also most of its cost. RefineFormer3D keeps the
encoder family, makes it cheaper (Ghost patch embeddings, low-rank Mix-FFN) and decodes top-down with gated fusions
down to a 1/2-resolution stem, then up to full resolution with a learned upsampling that also reads the raw image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from refineformer3d.networks.base import MixTransformerSegNet3D
from refineformer3d.networks.encoder import MixVisionTransformer3D
from refineformer3d.networks.heads import RefineHead3D
from refineformer3d.networks.registry import build_variant, register_model

__all__ = [
    "RefineFormer3D",
    "REFINEFORMER3D_VARIANTS",
    "refineformer3d_tiny",
    "refineformer3d_tiny_axial",
    "refineformer3d_tiny_slices",
    "refineformer3d_nano",
    "refineformer3d_small",
    "refineformer3d_base",
]


class RefineFormer3D(MixTransformerSegNet3D):
    """RefineFormer3D: Ghost/low-rank 3D Mix Transformer encoder and a gated top-down refine decoder.

    Encoder: four stages of overlapping Ghost patch embedding, efficient self-attention and low-rank Mix-FFN
    (:class:`~refineformer3d.networks.encoder.MixVisionTransformer3D`), at 1/4 ... 1/32 resolution.
    Decoder (:class:`~refineformer3d.networks.heads.RefineHead3D`): each stage is projected by a 1x1x1 ``Conv3d``; a
    strided 3x3x3 stem on the image adds a 1/2-resolution level. From the coarsest level down to the stem, every
    step upsamples with a transposed convolution and merges with the finer level by a gated fusion and a
    depthwise-separable 3x3x3 refinement. A last transposed convolution reads the stem-level map and the image
    folded into the same grid (space-to-depth), giving a thin full-resolution map; a 1x1x1 ``Conv3d`` classifies it.

    The defaults are the ``small`` variant (see :data:`REFINEFORMER3D_VARIANTS`). Weights are kept channels-last
    (``torch.channels_last_3d``): transformer tokens already have that layout, and on CPU the decoder's thin 3D
    convolutions run several times faster in it. The logits come out channels-last too.

    Shapes: ``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)``; ``D, H, W`` must be multiples of
    :attr:`spatial_divisor` (32 with the defaults) but need not be equal. With ``deep_supervision=True`` and in
    training mode the output is ``[logits, aux_1, ..., aux_k]``, ``aux_i`` at ``1 / 2**i`` of the input size
    (``1/2, 1/4, 1/8`` with the defaults); in eval mode it is always the logits tensor alone.

    Args:
        in_channels: input channels (4 MRI sequences for BraTS).
        out_channels: number of classes (3 BraTS regions).
        embed_dims: token width per encoder stage.
        depths: transformer blocks per stage.
        num_heads: attention heads per stage.
        sr_ratios: key/value spatial reduction per stage.
        mlp_ratios: Mix-FFN expansion per stage.
        patch_sizes: patch-embedding kernel per stage.
        strides: patch-embedding stride per stage; ``strides[0]`` must be larger than 2 and even (the stem works
            at 1/2).
        patch_embed: ``"ghost"`` (:class:`~refineformer3d.networks.blocks.GhostConv3d`) or ``"conv"``.
        ffn_rank_ratio: low-rank Mix-FFN, ``rank = round(embed_dim * ratio)``; ``None`` for full rank.
        decoder_channels: decoder width at each encoder stage, finest first.
        refine_channels: decoder width at full resolution and at the 1/2-resolution stem.
        norm: norm of the decoder, a MONAI norm name or ``(name, kwargs)``; group norm works for any batch size.
        act: activation of the decoder, a MONAI activation name or ``(name, kwargs)``.
        qkv_bias: whether query, key and value projections have a bias.
        drop_rate: dropout after encoder projections.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth of the last encoder block (linear from 0).
        deep_supervision: add auxiliary classifiers; in training mode ``forward`` returns a list. A checkpoint
            trained with them has extra ``decode_head.aux_heads.*`` weights: build the inference network with
            ``deep_supervision=True`` too (eval mode still returns one tensor) or load with ``strict=False``.
        deep_supr_num: number of auxiliary classifiers (stem level, first stage, ...).
        token_mixers: per encoder stage, ``"attention"``, ``"fourier"`` (a GFNet-style global filter in place of
            attention) or ``"axial"`` (attention along D, then H, then W at full resolution); ``None``: attention
            everywhere.
        kernels: ``"3d"`` or ``"2+1d"``: every ``k x k x k`` convolution (patch embeddings, Mix-FFNs, stem, fusions)
            as a 2-D ``k x k`` kernel shared by all axial slices and a depthwise ``k``-tap mixer across them
            (:class:`~refineformer3d.networks.blocks.Conv2Plus1d`, R(2+1)D's factorisation).

    Raises:
        ValueError: for inconsistent arguments, and in ``forward`` for spatial dims that are not multiples of
            :attr:`spatial_divisor`.

    Example:
        >>> net = RefineFormer3D(in_channels=4, out_channels=3)  # the small variant
        >>> net(torch.zeros(1, 4, 96, 128, 64)).shape
        torch.Size([1, 3, 96, 128, 64])
        >>> tiny = RefineFormer3D.from_variant("tiny", in_channels=4, out_channels=3)
    """

    variant_prefix = "refineformer3d"

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        embed_dims: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 4, 8),
        sr_ratios: Sequence[int] = (4, 2, 1, 1),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        patch_sizes: Sequence[int] = (7, 3, 3, 3),
        strides: Sequence[int] = (4, 2, 2, 2),
        patch_embed: str = "ghost",
        ffn_rank_ratio: float | None = 0.5,
        decoder_channels: Sequence[int] = (32, 48, 64, 96),
        refine_channels: Sequence[int] = (16, 16),
        norm: str | tuple = ("group", {"num_groups": 4}),
        act: str | tuple = ("relu", {"inplace": True}),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        deep_supervision: bool = False,
        deep_supr_num: int = 3,
        token_mixers: Sequence[str] | None = None,
        kernels: str = "3d",
    ) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        self.encoder = MixVisionTransformer3D(
            in_channels=in_channels,
            embed_dims=embed_dims,
            depths=depths,
            num_heads=num_heads,
            sr_ratios=sr_ratios,
            mlp_ratios=mlp_ratios,
            patch_sizes=patch_sizes,
            strides=strides,
            patch_embed=patch_embed,
            ffn_rank_ratio=ffn_rank_ratio,
            qkv_bias=qkv_bias,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            token_mixers=token_mixers,
            kernels=kernels,
        )
        self.decode_head = RefineHead3D(
            in_channels=self.encoder.embed_dims,
            out_channels=out_channels,
            image_channels=in_channels,
            decoder_channels=decoder_channels,
            refine_channels=refine_channels,
            scale_factors=strides[1:],
            reduction=strides[0],
            stem_stride=2,
            norm=norm,
            act=act,
            deep_supervision=deep_supervision,
            deep_supr_num=deep_supr_num,
            kernels=kernels,
        )
        self.apply(self._init_weights)
        self.to(memory_format=torch.channels_last_3d)

    @torch.jit.unused
    def _channels_last(self, x: torch.Tensor) -> torch.Tensor:
        # the image feeds the encoder, the stem and the final upsampling: change its layout once, not in each
        if torch.onnx.is_in_onnx_export():  # ONNX has no memory formats
            return x
        return x.contiguous(memory_format=torch.channels_last_3d)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)`` logits (a list with deep supervision)."""
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            self.check_input_size(x.shape[2:])
        if not torch.jit.is_scripting():
            x = self._channels_last(x)
        return self.decode_head(self.encoder(x), x)


#: Hyperparameters of each variant; the constructor defaults are ``"small"``.
REFINEFORMER3D_VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        embed_dims=(16, 32, 80, 128),
        num_heads=(1, 2, 5, 8),
        decoder_channels=(16, 24, 32, 48),
        refine_channels=(16, 8),
    ),
    "tiny_axial": dict(
        embed_dims=(16, 32, 80, 128),
        num_heads=(1, 2, 5, 8),
        decoder_channels=(16, 24, 32, 48),
        refine_channels=(16, 8),
        token_mixers=("axial", "attention", "attention", "attention"),
    ),
    "tiny_slices": dict(
        embed_dims=(16, 32, 80, 128),
        num_heads=(1, 2, 5, 8),
        decoder_channels=(16, 24, 32, 48),
        refine_channels=(16, 8),
        kernels="2+1d",
    ),
    "nano": dict(
        embed_dims=(16, 32, 64, 96),
        depths=(1, 1, 2, 1),
        num_heads=(1, 2, 4, 6),
        decoder_channels=(16, 16, 24, 32),
        refine_channels=(8, 8),
        token_mixers=("axial", "attention", "attention", "attention"),
        kernels="2+1d",
    ),
    "small": dict(),
    "base": dict(
        embed_dims=(48, 96, 192, 288),
        num_heads=(1, 2, 4, 6),
        decoder_channels=(48, 64, 96, 128),
        refine_channels=(16, 24),
        drop_path_rate=0.1,
    ),
}


@register_model
def refineformer3d_tiny(**overrides: Any) -> RefineFormer3D:
    """RefineFormer3D-T: halved widths for CPU deployment and quick experiments (<= 1.0M parameters)."""
    return build_variant(RefineFormer3D, REFINEFORMER3D_VARIANTS["tiny"], overrides)


@register_model
def refineformer3d_tiny_axial(**overrides: Any) -> RefineFormer3D:
    """Tiny with axial attention in stage 1 (attention along D, then H, then W in place of spatial reduction)."""
    return build_variant(RefineFormer3D, REFINEFORMER3D_VARIANTS["tiny_axial"], overrides)


@register_model
def refineformer3d_tiny_slices(**overrides: Any) -> RefineFormer3D:
    """Tiny with every 3-D kernel as a 2-D kernel shared by the axial slices and a depthwise mixer across them."""
    return build_variant(RefineFormer3D, REFINEFORMER3D_VARIANTS["tiny_slices"], overrides)


@register_model
def refineformer3d_nano(**overrides: Any) -> RefineFormer3D:
    """RefineFormer3D-N: a tenth of SegFormer3D's parameters (<= 0.45M) for the CPU, from the ideas that paid."""
    return build_variant(RefineFormer3D, REFINEFORMER3D_VARIANTS["nano"], overrides)


@register_model
def refineformer3d_small(**overrides: Any) -> RefineFormer3D:
    """RefineFormer3D-S, the default (the constructor's defaults): < 3.0M parameters, fewer FLOPs than SegFormer3D."""
    return build_variant(RefineFormer3D, REFINEFORMER3D_VARIANTS["small"], overrides)


@register_model
def refineformer3d_base(**overrides: Any) -> RefineFormer3D:
    """RefineFormer3D-B: wider encoder and decoder, with stochastic depth, for when accuracy matters more than size."""
    return build_variant(RefineFormer3D, REFINEFORMER3D_VARIANTS["base"], overrides)
