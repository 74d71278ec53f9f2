"""SegFormer3D (Perera et al., CVPR-W 2024), reproduced as the project's yardstick.

Faithful to the published model and its public code (OSUPCVLab/SegFormer3D) in everything that changes parameters or
FLOPs: a 4-stage 3D MiT encoder with dense patch embeddings and a Mix-FFN whose depthwise convolution is followed by
a BatchNorm, and the all-MLP head of width 256 whose 1/4-resolution logits are upsampled trilinearly by 4. It
differs in one behaviour: tokens are reshaped with the tracked ``(d, h, w)``, so non-cubic inputs work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from refineformer3d.networks.base import MixTransformerSegNet3D
from refineformer3d.networks.encoder import MixVisionTransformer3D
from refineformer3d.networks.heads import SegFormerHead3D
from refineformer3d.networks.registry import build_variant, register_model

__all__ = ["SegFormer3D", "segformer3d"]


class SegFormer3D(MixTransformerSegNet3D):
    """SegFormer3D: a 3D Mix Transformer encoder and an all-MLP decode head.

    The defaults are the published model (4.5M parameters with 4 input channels and 3 classes). Weights are kept
    channels-last (``torch.channels_last_3d``), the layout of the transformer tokens, which spares layout copies on
    CPU; the arithmetic is unchanged.

    Shapes: ``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)``; ``D, H, W`` must be multiples of
    :attr:`spatial_divisor` (32 with the defaults), but need not be equal.

    Args:
        in_channels: input channels (4 MRI sequences for BraTS).
        out_channels: number of classes (3 BraTS regions).
        embed_dims: token width per encoder stage.
        depths: transformer blocks per stage.
        num_heads: attention heads per stage.
        sr_ratios: key/value spatial reduction per stage.
        mlp_ratios: Mix-FFN expansion per stage.
        patch_sizes: patch-embedding kernel per stage.
        strides: patch-embedding stride per stage.
        decoder_channels: width of the all-MLP head.
        ffn_norm: norm after the Mix-FFN depthwise convolution (``None`` to drop it; the public code uses batch norm).
        norm: norm of the head's fusion layer, a MONAI norm name or ``(name, kwargs)``.
        act: activation of the head's fusion layer.
        qkv_bias: whether query, key and value projections have a bias.
        drop_rate: dropout after encoder projections.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth of the last encoder block (linear from 0).
        decoder_dropout: dropout before the classifier.

    Raises:
        ValueError: for inconsistent per-stage arguments (see :class:`MixVisionTransformer3D`), and in ``forward``
            for spatial dims that are not multiples of :attr:`spatial_divisor`.

    Example:
        >>> net = SegFormer3D(in_channels=4, out_channels=3)
        >>> net(torch.zeros(1, 4, 96, 128, 64)).shape
        torch.Size([1, 3, 96, 128, 64])
    """

    variant_prefix = "segformer3d"

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        embed_dims: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        sr_ratios: Sequence[int] = (4, 2, 1, 1),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        patch_sizes: Sequence[int] = (7, 3, 3, 3),
        strides: Sequence[int] = (4, 2, 2, 2),
        decoder_channels: int = 256,
        ffn_norm: str | tuple | None = "batch",
        norm: str | tuple = "batch",
        act: str | tuple = "relu",
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        decoder_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = MixVisionTransformer3D(
            in_channels=in_channels,
            embed_dims=embed_dims,
            depths=depths,
            num_heads=num_heads,
            sr_ratios=sr_ratios,
            mlp_ratios=mlp_ratios,
            patch_sizes=patch_sizes,
            strides=strides,
            patch_embed="conv",
            ffn_norm=ffn_norm,
            qkv_bias=qkv_bias,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
        )
        self.decode_head = SegFormerHead3D(
            in_channels=self.encoder.embed_dims,
            out_channels=out_channels,
            channels=decoder_channels,
            scale_factor=self.encoder.reductions[0],
            norm=norm,
            act=act,
            dropout=decoder_dropout,
        )
        self.apply(self._init_weights)
        self.to(memory_format=torch.channels_last_3d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)`` logits."""
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            self.check_input_size(x.shape[2:])
        return self.decode_head(self.encoder(x))


_SEGFORMER3D_PUBLISHED: dict[str, Any] = dict(
    embed_dims=(32, 64, 160, 256),
    depths=(2, 2, 2, 2),
    num_heads=(1, 2, 5, 8),
    sr_ratios=(4, 2, 1, 1),
    mlp_ratios=(4, 4, 4, 4),
    patch_sizes=(7, 3, 3, 3),
    strides=(4, 2, 2, 2),
    decoder_channels=256,
)


@register_model
def segformer3d(**overrides: Any) -> SegFormer3D:
    """SegFormer3D as published: 4.5M parameters, ~25 GFLOP at ``4 x 128^3`` (FlopCounterMode, 2 FLOP per MAC)."""
    return build_variant(SegFormer3D, _SEGFORMER3D_PUBLISHED, overrides)
