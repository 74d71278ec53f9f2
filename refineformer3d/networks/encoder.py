"""The shared encoder: a hierarchical 3D Mix Transformer (MiT, from SegFormer) built from one stage class."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from refineformer3d.networks.blocks import (
    KERNELS,
    PATCH_EMBED_TYPES,
    TOKEN_MIXERS,
    MixTransformerBlock3D,
    OverlapPatchEmbed3D,
    tokens_to_volume,
)

__all__ = ["MixTransformerStage3D", "MixVisionTransformer3D"]


class MixTransformerStage3D(nn.Module):
    """One encoder stage: overlapping patch embedding, ``depth`` transformer blocks, a final LayerNorm.

    Shapes: ``(B, in_channels, D, H, W) -> (B, dim, D / stride, H / stride, W / stride)``.

    Args:
        in_channels: channels of the stage input.
        dim: token width of the stage.
        depth: number of transformer blocks.
        num_heads: attention heads.
        sr_ratio: spatial reduction of attention keys and values.
        mlp_ratio: Mix-FFN expansion.
        patch_size: kernel of the patch embedding.
        stride: stride of the patch embedding.
        patch_embed: ``"conv"`` or ``"ghost"``.
        ffn_rank: rank of the low-rank Mix-FFN (``None``: full rank).
        ffn_norm: optional norm inside the Mix-FFN.
        qkv_bias: whether query, key and value projections have a bias.
        drop: dropout after projections.
        attn_drop: dropout on attention weights.
        drop_path: stochastic-depth probability of each block, ``depth`` values.
        token_mixer: ``"attention"``, ``"fourier"`` or ``"axial"``
            (see :class:`~refineformer3d.networks.blocks.MixTransformerBlock3D`).
        kernels: ``"3d"`` or ``"2+1d"``: the patch embedding's and Mix-FFNs' convolutions
            (see :class:`~refineformer3d.networks.blocks.Conv2Plus1d`).

    Raises:
        ValueError: if ``len(drop_path) != depth``.
    """

    def __init__(
        self,
        in_channels: int,
        dim: int,
        depth: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: float,
        patch_size: int,
        stride: int,
        patch_embed: str = "conv",
        ffn_rank: int | None = None,
        ffn_norm: str | tuple | None = None,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] = (),
        token_mixer: str = "attention",
        kernels: str = "3d",
    ) -> None:
        super().__init__()
        drop_path = list(drop_path) or [0.0] * depth
        if len(drop_path) != depth:
            raise ValueError(f"drop_path needs one value per block ({depth}), got {len(drop_path)}.")
        self.patch_embed = OverlapPatchEmbed3D(in_channels, dim, patch_size, stride, patch_embed, kernels)
        self.blocks = nn.ModuleList(
            [
                MixTransformerBlock3D(
                    dim,
                    num_heads,
                    mlp_ratio,
                    sr_ratio,
                    ffn_rank,
                    ffn_norm,
                    qkv_bias,
                    drop,
                    attn_drop,
                    rate,
                    token_mixer=token_mixer,
                    kernels=kernels,
                )
                for rate in drop_path
            ]
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, spatial_shape = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, spatial_shape)
        return tokens_to_volume(self.norm(x), spatial_shape)


def _check_per_stage(num_stages: int, **values: Sequence) -> None:
    for name, value in values.items():
        if len(value) != num_stages:
            raise ValueError(
                f"{name} needs one value per stage ({num_stages}, as in depths), got {len(value)}: {list(value)}."
            )


class MixVisionTransformer3D(nn.Module):
    """Hierarchical 3D Mix Transformer encoder (SegFormer's MiT in 3D), without positional embeddings.

    Every stage reduces the volume by its stride; tokens are reshaped with the ``(d, h, w)`` that each patch embedding
    reports, so non-cubic inputs (e.g. ``96 x 128 x 64``) are handled exactly.

    Shapes: ``(B, in_channels, D, H, W) -> [(B, embed_dims[i], D / r_i, H / r_i, W / r_i)]`` with ``r_i`` the
    cumulative stride ``reductions[i]``. ``D, H, W`` must be multiples of :attr:`spatial_divisor`.

    Args:
        in_channels: input channels (MRI sequences).
        embed_dims: token width per stage.
        depths: transformer blocks per stage; ``len(depths)`` is the number of stages.
        num_heads: attention heads per stage.
        sr_ratios: key/value spatial reduction per stage.
        mlp_ratios: Mix-FFN expansion per stage.
        patch_sizes: patch-embedding kernel per stage.
        strides: patch-embedding stride per stage.
        patch_embed: ``"conv"`` (dense, SegFormer) or ``"ghost"`` (:class:`GhostConv3d`).
        ffn_rank_ratio: if given, Mix-FFN linear layers are low rank with ``rank = round(embed_dim * ratio)``.
        ffn_norm: optional norm after the Mix-FFN depthwise convolution (the public SegFormer3D uses ``"batch"``).
        qkv_bias: whether query, key and value projections have a bias.
        drop_rate: dropout after projections.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth of the last block; rates grow linearly from 0 over all blocks.
        token_mixers: per stage, ``"attention"`` (efficient self-attention), ``"fourier"`` (a global filter,
            :class:`~refineformer3d.networks.blocks.GlobalFilter3D`) or ``"axial"`` (attention along each axis in
            turn, :class:`~refineformer3d.networks.blocks.AxialAttention3D`); ``None``: attention everywhere.
        kernels: ``"3d"`` (``k x k x k`` convolutions) or ``"2+1d"``: every convolution of the patch embeddings and
            Mix-FFNs as a 2-D kernel shared by all slices and a depthwise mixer across them
            (:class:`~refineformer3d.networks.blocks.Conv2Plus1d`).

    Raises:
        ValueError: for per-stage lists of different lengths, heads that do not divide a width, strides larger
            than kernels, unknown mixers or kernels, or rates outside ``[0, 1)``.

    Example:
        >>> enc = MixVisionTransformer3D(in_channels=4)
        >>> [f.shape[2:] for f in enc(torch.zeros(1, 4, 64, 96, 32))]  # doctest: +SKIP
        [(16, 24, 8), (8, 12, 4), (4, 6, 2), (2, 3, 1)]
    """

    def __init__(
        self,
        in_channels: int = 4,
        embed_dims: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        sr_ratios: Sequence[int] = (4, 2, 1, 1),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        patch_sizes: Sequence[int] = (7, 3, 3, 3),
        strides: Sequence[int] = (4, 2, 2, 2),
        patch_embed: str = "conv",
        ffn_rank_ratio: float | None = None,
        ffn_norm: str | tuple | None = None,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        token_mixers: Sequence[str] | None = None,
        kernels: str = "3d",
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        token_mixers = ("attention",) * num_stages if token_mixers is None else tuple(token_mixers)
        if num_stages < 1:
            raise ValueError("depths must name at least one stage.")
        _check_per_stage(
            num_stages,
            embed_dims=embed_dims,
            num_heads=num_heads,
            sr_ratios=sr_ratios,
            mlp_ratios=mlp_ratios,
            patch_sizes=patch_sizes,
            strides=strides,
            token_mixers=token_mixers,
        )
        for i, (dim, heads, kernel, stride) in enumerate(zip(embed_dims, num_heads, patch_sizes, strides)):
            if dim % heads != 0:
                raise ValueError(f"stage {i}: embed_dims[{i}]={dim} must be divisible by num_heads[{i}]={heads}.")
            if not 1 <= stride <= kernel:
                raise ValueError(f"stage {i}: strides[{i}]={stride} must be between 1 and patch_sizes[{i}]={kernel}.")
            if kernel % 2 == 0:
                raise ValueError(f"stage {i}: patch_sizes[{i}]={kernel} must be odd to keep the grid aligned.")
        if min(depths) < 1:
            raise ValueError(f"every stage needs at least one block, got depths={list(depths)}.")
        if patch_embed not in PATCH_EMBED_TYPES:
            raise ValueError(f"patch_embed must be one of {PATCH_EMBED_TYPES}, got {patch_embed!r}.")
        if any(mixer not in TOKEN_MIXERS for mixer in token_mixers):
            raise ValueError(f"token_mixers must each be one of {TOKEN_MIXERS}, got {list(token_mixers)}.")
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}.")
        if ffn_rank_ratio is not None and ffn_rank_ratio <= 0:
            raise ValueError(f"ffn_rank_ratio must be positive or None, got {ffn_rank_ratio}.")
        for name, rate in (
            ("drop_rate", drop_rate),
            ("attn_drop_rate", attn_drop_rate),
            ("drop_path_rate", drop_path_rate),
        ):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate}.")

        self.in_channels = in_channels
        self.embed_dims = tuple(int(d) for d in embed_dims)
        self.reductions = tuple(math.prod(strides[: i + 1]) for i in range(num_stages))
        # attention's key/value reduction also has to tile the stage grid exactly (only where it reduces them)
        reduced = [r * s for r, s, mixer in zip(self.reductions, sr_ratios, token_mixers) if mixer == "attention"]
        self.spatial_divisor = math.lcm(*self.reductions, *reduced)

        # explicit device: the rates are Python floats even when the net is built under torch.device("meta")
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        for i in range(num_stages):
            first = sum(depths[:i])
            self.stages.append(
                MixTransformerStage3D(
                    in_channels=in_channels if i == 0 else embed_dims[i - 1],
                    dim=embed_dims[i],
                    depth=depths[i],
                    num_heads=num_heads[i],
                    sr_ratio=sr_ratios[i],
                    mlp_ratio=mlp_ratios[i],
                    patch_size=patch_sizes[i],
                    stride=strides[i],
                    patch_embed=patch_embed,
                    ffn_rank=None if ffn_rank_ratio is None else max(1, round(embed_dims[i] * ffn_rank_ratio)),
                    ffn_norm=ffn_norm,
                    qkv_bias=qkv_bias,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rates[first : first + depths[i]],
                    token_mixer=token_mixers[i],
                    kernels=kernels,
                )
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
