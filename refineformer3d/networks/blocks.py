"""Building blocks of the 3D Mix Transformer encoder.

Tokens travel as ``(B, N, C)`` with ``N = d * h * w``; every block that needs the volume receives ``(d, h, w)``
from the patch embedding that made the tokens, so non-cubic inputs work and no shape is ever guessed from ``N``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import DropPath
from monai.networks.layers.utils import get_norm_layer

__all__ = [
    "tokens_to_volume",
    "volume_to_tokens",
    "KERNELS",
    "Conv2Plus1d",
    "conv3d",
    "GhostConv3d",
    "OverlapPatchEmbed3D",
    "LowRankLinear",
    "EfficientSelfAttention3D",
    "GlobalFilter3D",
    "AxialAttention3D",
    "MixFFN3D",
    "MixTransformerBlock3D",
]

PATCH_EMBED_TYPES = ("conv", "ghost")
TOKEN_MIXERS = ("attention", "fourier", "axial")
#: how a k x k x k kernel is built: whole, or as a 2-D kernel shared by every slice and a mixer across slices
KERNELS = ("3d", "2+1d")


def tokens_to_volume(x: torch.Tensor, spatial_shape: tuple[int, int, int]) -> torch.Tensor:
    """``(B, N, C) -> (B, C, d, h, w)`` with ``N = d * h * w``."""
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, spatial_shape[0], spatial_shape[1], spatial_shape[2])


def volume_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, d, h, w) -> (B, N, C)`` with ``N = d * h * w``."""
    return x.flatten(2).transpose(1, 2)


class Conv2Plus1d(nn.Module):
    """A k x k x k convolution factorised across slices, as R(2+1)D (Tran et al. 2018) does across video frames.

    A 2-D ``k x k`` convolution, the same for every slice, maps ``in_channels`` to ``out_channels`` in the slice
    plane; a depthwise ``k``-tap convolution across slices then mixes each output channel along the slice axis. A
    ``k^3`` kernel's ``in * out * k^3`` weights become ``in * out * k^2 / groups + out * k``. Unlike R(2+1)D, whose
    temporal step is a dense convolution, the mixer across slices is depthwise: it is the cheap part by design. The
    stride is split the same way (in the plane by the 2-D kernel, across slices by the mixer), and so is the padding.

    The slices are cut across ``slice_axis`` of ``(D, H, W)``: by default ``W``, the axial axis once the bundle has
    reoriented a study to RAS, the axis across which clinical scans are acquired and
    :class:`~refineformer3d.networks.SegFormer2D` cuts its slices.

    Shapes: ``(B, in_channels, D, H, W) -> (B, out_channels, D', H', W')`` as for ``nn.Conv3d`` with the same
    ``kernel_size``, ``stride`` and ``padding``.

    Args:
        in_channels: input channels.
        out_channels: output channels; a multiple of ``groups``.
        kernel_size: the ``k`` of both factors.
        stride: the stride, in the plane and across slices.
        padding: the padding, in the plane and across slices; ``kernel_size // 2`` by default.
        groups: groups of the 2-D convolution (``in_channels`` for a depthwise ``k^3`` convolution).
        bias: whether the output has a bias (the 2-D convolution never has one: it would fold into it).
        slice_axis: the spatial axis (0, 1 or 2 of ``D, H, W``) across which slices are cut.

    Raises:
        ValueError: if ``slice_axis`` is not 0, 1 or 2.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        bias: bool = True,
        slice_axis: int = 2,
    ) -> None:
        super().__init__()
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2 (a spatial axis of D, H, W), got {slice_axis!r}.")
        padding = kernel_size // 2 if padding is None else padding

        def per_axis(in_plane: int, across: int) -> tuple[int, int, int]:
            values = [in_plane, in_plane, in_plane]
            values[slice_axis] = across
            return values[0], values[1], values[2]

        self.in_plane = nn.Conv3d(
            in_channels,
            out_channels,
            per_axis(kernel_size, 1),
            stride=per_axis(stride, 1),
            padding=per_axis(padding, 0),
            groups=groups,
            bias=False,
        )
        self.across_slices = nn.Conv3d(
            out_channels,
            out_channels,
            per_axis(1, kernel_size),
            stride=per_axis(1, stride),
            padding=per_axis(0, padding),
            groups=out_channels,
            bias=bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.across_slices(self.in_plane(x))


def conv3d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | None = None,
    groups: int = 1,
    bias: bool = True,
    kernels: str = "3d",
) -> nn.Module:
    """A ``k x k x k`` convolution as ``kernels`` builds it: ``"3d"`` an ``nn.Conv3d``, ``"2+1d"`` a
    :class:`Conv2Plus1d`. ``padding`` defaults to ``kernel_size // 2``.

    Raises:
        ValueError: for an unknown ``kernels``.
    """
    padding = kernel_size // 2 if padding is None else padding
    if kernels == "3d":
        return nn.Conv3d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
    if kernels == "2+1d":
        return Conv2Plus1d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
    raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}.")


class GhostConv3d(nn.Module):
    """Ghost convolution (GhostNet, Han et al. 2020) in 3D.

    A dense convolution produces ``ceil(out_channels / ratio)`` intrinsic maps; a cheap depthwise convolution derives
    the remaining "ghost" maps from them. With ``ratio=2`` this halves the parameters and multiply-adds of a dense
    ``Conv3d`` of the same kernel, which matters most in patch embeddings, the encoder's largest convolutions.

    Shapes: ``(B, in_channels, D, H, W) -> (B, out_channels, D', H', W')`` as for ``nn.Conv3d``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: kernel of the dense convolution.
        stride: stride of the dense convolution.
        padding: padding of the dense convolution; ``kernel_size // 2`` by default.
        ratio: output channels per intrinsic channel (2 or more).
        cheap_kernel_size: kernel of the depthwise convolution (odd).
        bias: whether both convolutions have a bias.
        kernels: ``"3d"`` or ``"2+1d"`` (both convolutions as :class:`Conv2Plus1d`).

    Raises:
        ValueError: if ``ratio < 2``, ``cheap_kernel_size`` is even or ``kernels`` unknown.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        ratio: int = 2,
        cheap_kernel_size: int = 3,
        bias: bool = True,
        kernels: str = "3d",
    ) -> None:
        super().__init__()
        if ratio < 2:
            raise ValueError(f"ratio must be at least 2, got {ratio}.")
        if cheap_kernel_size % 2 == 0:
            raise ValueError(f"cheap_kernel_size must be odd, got {cheap_kernel_size}.")
        self.out_channels = out_channels
        intrinsic = math.ceil(out_channels / ratio)
        self.primary = conv3d(in_channels, intrinsic, kernel_size, stride, padding, bias=bias, kernels=kernels)
        self.cheap = conv3d(
            intrinsic, intrinsic * (ratio - 1), cheap_kernel_size, groups=intrinsic, bias=bias, kernels=kernels
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        # ceil() above may make one ghost map too many; drop it rather than constrain out_channels
        return torch.cat([y, self.cheap(y)], dim=1)[:, : self.out_channels]


class OverlapPatchEmbed3D(nn.Module):
    """Overlapping patch embedding: a strided convolution (kernel larger than stride), then a LayerNorm.

    Shapes: ``(B, in_channels, D, H, W) -> (B, N, embed_dim), (d, h, w)`` with ``d = D / stride`` etc. and
    ``N = d * h * w``.

    Args:
        in_channels: input channels.
        embed_dim: token width.
        patch_size: convolution kernel; padding is ``patch_size // 2``.
        stride: convolution stride, the reduction of this stage.
        patch_embed: ``"conv"`` (a dense ``Conv3d``, as SegFormer) or ``"ghost"`` (:class:`GhostConv3d`).
        kernels: ``"3d"`` or ``"2+1d"`` (the convolutions as :class:`Conv2Plus1d`).

    Raises:
        ValueError: for an unknown ``patch_embed`` or ``kernels``.
    """

    def __init__(
        self,
        in_channels: int,
        embed_dim: int,
        patch_size: int = 7,
        stride: int = 4,
        patch_embed: str = "conv",
        kernels: str = "3d",
    ) -> None:
        super().__init__()
        if patch_embed == "conv":
            self.proj: nn.Module = conv3d(in_channels, embed_dim, patch_size, stride, kernels=kernels)
        elif patch_embed == "ghost":
            self.proj = GhostConv3d(in_channels, embed_dim, patch_size, stride=stride, kernels=kernels)
        else:
            raise ValueError(f"patch_embed must be one of {PATCH_EMBED_TYPES}, got {patch_embed!r}.")
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        x = self.proj(x)
        spatial_shape = (x.shape[2], x.shape[3], x.shape[4])
        return self.norm(volume_to_tokens(x)), spatial_shape


class LowRankLinear(nn.Module):
    """A linear map factorised through ``rank`` dimensions: ``W = U V`` with ``V: in -> rank``, ``U: rank -> out``.

    Parameters fall from ``in * out`` to ``rank * (in + out)``. Shapes: ``(..., in_features) -> (..., out_features)``.

    Args:
        in_features: input width.
        out_features: output width.
        rank: width of the bottleneck.
        bias: whether the output has a bias (the bottleneck never has one: it would fold into it).

    Raises:
        ValueError: if ``rank < 1``.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be positive, got {rank}.")
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def _linear(in_features: int, out_features: int, rank: int | None) -> nn.Module:
    if rank is None:
        return nn.Linear(in_features, out_features)
    return LowRankLinear(in_features, out_features, rank)


class EfficientSelfAttention3D(nn.Module):
    """Multi-head self-attention whose keys and values come from a spatially reduced volume (SegFormer, PVT).

    A ``Conv3d`` with kernel and stride ``sr_ratio`` shrinks the key/value sequence by ``sr_ratio ** 3``, which is
    what makes attention affordable on the ``D/4 x H/4 x W/4`` tokens of the first stage.

    Shapes: ``(B, N, dim), (d, h, w) -> (B, N, dim)``.

    Args:
        dim: token width.
        num_heads: attention heads; must divide ``dim``.
        sr_ratio: spatial reduction of keys and values (1: none).
        qkv_bias: whether the query, key and value projections have a bias.
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout after the output projection.

    Raises:
        ValueError: if ``num_heads`` does not divide ``dim`` or ``sr_ratio < 1``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}).")
        if sr_ratio < 1:
            raise ValueError(f"sr_ratio must be at least 1, got {sr_ratio}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        if sr_ratio > 1:
            self.sr: nn.Module = nn.Conv3d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm: nn.Module = nn.LayerNorm(dim)
        else:
            self.sr = nn.Identity()
            self.norm = nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, spatial_shape: tuple[int, int, int]) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.norm(volume_to_tokens(self.sr(tokens_to_volume(x, spatial_shape))))
        # (B, M, 2C) -> (2, B, heads, M, head_dim), M the reduced sequence length
        kv = self.kv(x).reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], dropout_p=self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class GlobalFilter3D(nn.Module):
    """Fourier token mixing (GFNet, Rao et al. 2021) in 3D: a learnable global filter applied in frequency space.

    ``irfftn(rfftn(x) * K)`` over the volume mixes every token with every other in ``O(N log N)`` per channel, a
    circular depthwise convolution as large as the volume. GFNet's filter has one weight per frequency of a fixed
    grid; here the weights sample the filter on a ``filter_size`` grid of normalised frequencies (zero frequency in
    the middle of the full axes) and are resampled trilinearly to each input's frequency grid, so training crops and
    inference windows of other sizes share one filter.

    Shapes: ``(B, N, dim), (d, h, w) -> (B, N, dim)``.

    Args:
        dim: token width (one filter per channel).
        filter_size: the filter's grid over the ``(d, h, w // 2 + 1)`` frequencies of ``torch.fft.rfftn``.
        proj_drop: dropout after the output projection.

    Raises:
        ValueError: if ``filter_size`` does not have three positive entries.
    """

    def __init__(self, dim: int, filter_size: tuple[int, int, int] = (8, 8, 5), proj_drop: float = 0.0) -> None:
        super().__init__()
        if len(filter_size) != 3 or min(filter_size) < 1:
            raise ValueError(f"filter_size must be three positive sizes, got {tuple(filter_size)}.")
        self.dim = dim
        self.filter_size = tuple(int(s) for s in filter_size)
        # real and imaginary parts; small, as GFNet initialises its filter, so a new block starts near identity
        self.filter = nn.Parameter(0.02 * torch.randn(2, dim, *self.filter_size))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def frequency_response(self, spatial_shape: tuple[int, int, int]) -> torch.Tensor:
        """The filter on the rfftn grid of ``spatial_shape``: complex ``(dim, d, h, w // 2 + 1)``."""
        d, h, w = spatial_shape
        size = (d, h, w // 2 + 1)
        weight = self.filter.reshape(1, 2 * self.dim, *self.filter_size)
        if size != self.filter_size:
            weight = F.interpolate(weight, size=size, mode="trilinear", align_corners=True)
        # the full axes d and h were sampled with zero frequency in the middle; rfftn puts it first
        weight = torch.fft.ifftshift(weight.reshape(2, self.dim, *size), dim=(2, 3))
        return torch.complex(weight[0], weight[1])

    def forward(self, x: torch.Tensor, spatial_shape: tuple[int, int, int]) -> torch.Tensor:
        # channels-first: each channel's volume contiguous, which the CPU FFT runs faster than strided channels-last
        volume = tokens_to_volume(x.float(), spatial_shape)
        spectrum = torch.fft.rfftn(volume, dim=(2, 3, 4), norm="ortho") * self.frequency_response(spatial_shape)
        mixed = torch.fft.irfftn(spectrum, s=spatial_shape, dim=(2, 3, 4), norm="ortho")
        return self.proj_drop(self.proj(volume_to_tokens(mixed).to(x.dtype)))


class AxialAttention3D(nn.Module):
    """Axial attention (Ho et al. 2019; Axial-DeepLab, Wang et al. 2020) in 3D: attention along D, then H, then W.

    Each pass attends only within the rows of one axis: the values are mixed along ``D`` by the attention of the
    queries and keys along ``D``, the result along ``H``, and that along ``W``; after the three passes every token
    has gathered from the whole volume at full resolution, for ``N * (d + h + w)`` query-key products against
    spatial-reduction attention's ``N^2 / sr^3`` (:class:`EfficientSelfAttention3D`, 32 768 x 512 at the first stage
    of a 128^3 window, against 32 768 x 96 here). The three passes share one projection of queries, keys and values:
    the first stage is bound by passes over memory on a CPU, and a stack of three axial layers, each with its own
    projections, would triple them.

    Shapes: ``(B, N, dim), (d, h, w) -> (B, N, dim)``.

    Args:
        dim: token width.
        num_heads: attention heads; must divide ``dim``.
        qkv_bias: whether the query, key and value projection has a bias.
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout after the output projection.

    Raises:
        ValueError: if ``num_heads`` does not divide ``dim``.
    """

    def __init__(
        self, dim: int, num_heads: int = 1, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # (B, d, h, w, heads, head_dim) with the pass's axis swapped with the heads: (B, ..., heads, ..., L, head_dim),
        # attention's layout; each swap is its own inverse
        self.axis_swaps = [[0, 4, 2, 3, 1, 5], [0, 1, 4, 3, 2, 5], [0, 1, 2, 4, 3, 5]]

    def forward(self, x: torch.Tensor, spatial_shape: tuple[int, int, int]) -> torch.Tensor:
        b, n, c = x.shape
        d, h, w = spatial_shape
        q, k, v = self.qkv(x).reshape(b, d, h, w, 3, self.num_heads, self.head_dim).unbind(4)
        dropout = self.attn_drop if self.training else 0.0
        for swap in self.axis_swaps:
            rows = q.permute(swap).shape
            # as (rows, 1, L, head_dim): the CPU's fused attention kernel takes 4-D inputs only, and the rows copied
            # into it once run 2.4 times faster than the 6-D views left to the unfused path (1 thread, 32^3 tokens)
            v = F.scaled_dot_product_attention(
                q.permute(swap).reshape(-1, 1, rows[-2], rows[-1]),
                k.permute(swap).reshape(-1, 1, rows[-2], rows[-1]),
                v.permute(swap).reshape(-1, 1, rows[-2], rows[-1]),
                dropout_p=dropout,
            )
            v = v.reshape(rows).permute(swap)
        return self.proj_drop(self.proj(v.reshape(b, n, c)))


class MixFFN3D(nn.Module):
    """Mix-FFN: Linear, depthwise 3x3x3 ``Conv3d``, GELU, Linear.

    The depthwise convolution leaks enough position information through its zero padding that the encoder needs no
    positional embedding (SegFormer, Xie et al. 2021), which is why any input size works.

    Shapes: ``(B, N, dim), (d, h, w) -> (B, N, dim)``.

    Args:
        dim: token width.
        hidden_dim: width of the expansion.
        rank: if given, both linear layers are :class:`LowRankLinear` with this rank.
        dw_norm: optional norm after the depthwise convolution, a MONAI norm name or ``(name, kwargs)``; the public
            SegFormer3D code uses ``"batch"``.
        drop: dropout after the activation and after the output layer.
        kernels: ``"3d"`` or ``"2+1d"`` (the depthwise convolution as :class:`Conv2Plus1d`).
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        rank: int | None = None,
        dw_norm: str | tuple | None = None,
        drop: float = 0.0,
        kernels: str = "3d",
    ) -> None:
        super().__init__()
        self.fc1 = _linear(dim, hidden_dim, rank)
        self.dwconv = conv3d(hidden_dim, hidden_dim, 3, groups=hidden_dim, kernels=kernels)
        self.dw_norm = nn.Identity() if dw_norm is None else get_norm_layer(dw_norm, 3, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = _linear(hidden_dim, dim, rank)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, spatial_shape: tuple[int, int, int]) -> torch.Tensor:
        x = self.fc1(x)
        x = volume_to_tokens(self.dw_norm(self.dwconv(tokens_to_volume(x, spatial_shape))))
        x = self.drop(self.act(x))
        return self.drop(self.fc2(x))


class MixTransformerBlock3D(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``, with stochastic depth.

    Shapes: ``(B, N, dim), (d, h, w) -> (B, N, dim)``.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: Mix-FFN expansion, ``hidden = round(dim * mlp_ratio)``.
        sr_ratio: spatial reduction of attention keys and values.
        ffn_rank: rank of the low-rank Mix-FFN (``None``: full rank).
        ffn_norm: optional norm inside the Mix-FFN (see :class:`MixFFN3D`).
        qkv_bias: whether query, key and value projections have a bias.
        drop: dropout after projections.
        attn_drop: dropout on attention weights.
        drop_path: stochastic-depth probability of both residual branches.
        token_mixer: ``"attention"`` (:class:`EfficientSelfAttention3D`), ``"fourier"`` (:class:`GlobalFilter3D`;
            ``num_heads``, ``sr_ratio``, ``qkv_bias`` and ``attn_drop`` then go unused) or ``"axial"``
            (:class:`AxialAttention3D`; ``sr_ratio`` goes unused).
        kernels: ``"3d"`` or ``"2+1d"``: the Mix-FFN's depthwise convolution (see :class:`MixFFN3D`).

    Raises:
        ValueError: for an unknown ``token_mixer``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        sr_ratio: int = 1,
        ffn_rank: int | None = None,
        ffn_norm: str | tuple | None = None,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        token_mixer: str = "attention",
        kernels: str = "3d",
    ) -> None:
        super().__init__()
        if token_mixer not in TOKEN_MIXERS:
            raise ValueError(f"token_mixer must be one of {TOKEN_MIXERS}, got {token_mixer!r}.")
        self.norm1 = nn.LayerNorm(dim)
        if token_mixer == "fourier":
            self.attn: nn.Module = GlobalFilter3D(dim, proj_drop=drop)
        elif token_mixer == "axial":
            self.attn = AxialAttention3D(dim, num_heads, qkv_bias, attn_drop, drop)
        else:
            self.attn = EfficientSelfAttention3D(dim, num_heads, sr_ratio, qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN3D(dim, round(dim * mlp_ratio), ffn_rank, ffn_norm, drop, kernels)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, spatial_shape: tuple[int, int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), spatial_shape))
        return x + self.drop_path(self.mlp(self.norm2(x), spatial_shape))
