"""Decode heads. Each takes the feature pyramid as a sequence, finest level first, and returns logits.

Heads are interchangeable: they only rely on the channels of each level (``in_channels``) and on the scale between
levels, never on a fixed number of stages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.utils import get_act_layer, get_norm_layer

from refineformer3d.networks.blocks import conv3d, tokens_to_volume, volume_to_tokens

__all__ = [
    "SegFormerHead3D",
    "GatedFusion3D",
    "PointwiseConv3d",
    "PatchExpandConvTranspose3d",
    "RefineHead3D",
    "space_to_depth",
]


class _TokenMLP(nn.Module):
    """SegFormer's per-stage "MLP": a Linear on the tokens of a volume, then a LayerNorm.

    Shapes: ``(B, in_channels, d, h, w) -> (B, channels, d, h, w)``.
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, channels)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial_shape = (x.shape[2], x.shape[3], x.shape[4])
        return tokens_to_volume(self.norm(self.proj(volume_to_tokens(x))), spatial_shape)


class SegFormerHead3D(nn.Module):
    """SegFormer's all-MLP decode head in 3D, as in the public SegFormer3D.

    Each level is projected to ``channels`` by a Linear + LayerNorm and upsampled (trilinear) to the finest level;
    the maps are concatenated coarsest first, fused by a 1x1x1 ``Conv3d`` + norm + activation, classified by a
    1x1x1 ``Conv3d`` and upsampled trilinearly by ``scale_factor`` to the input resolution.

    Shapes: ``[(B, in_channels[i], D / r_i, H / r_i, W / r_i)] -> (B, out_channels, D, H, W)`` where
    ``r_0 = scale_factor``.

    Args:
        in_channels: channels per level, finest first.
        out_channels: number of classes.
        channels: width of the projections and of the fusion.
        scale_factor: reduction of the finest level, undone by the final trilinear upsampling.
        norm: norm of the fusion, a MONAI norm name or ``(name, kwargs)``.
        act: activation of the fusion, a MONAI activation name or ``(name, kwargs)``.
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        channels: int = 256,
        scale_factor: int = 4,
        norm: str | tuple = "batch",
        act: str | tuple = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.scale_factor = float(scale_factor)
        self.linear_c = nn.ModuleList([_TokenMLP(c, channels) for c in in_channels])
        self.fuse = nn.Sequential(
            nn.Conv3d(len(in_channels) * channels, channels, 1, bias=False),
            get_norm_layer(norm, 3, channels),
            get_act_layer(act),
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv3d(channels, out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[2:]
        maps: list[torch.Tensor] = []  # coarsest first, the order of the published head's concatenation
        for i, mlp in enumerate(self.linear_c):
            y = mlp(features[i])
            if i > 0:
                y = F.interpolate(y, size=size, mode="trilinear", align_corners=False)
            maps.insert(0, y)
        x = self.fuse(torch.cat(maps, dim=1))
        x = self.classifier(self.dropout(x))
        return F.interpolate(x, scale_factor=self.scale_factor, mode="trilinear", align_corners=False)


class PointwiseConv3d(nn.Conv3d):
    """A 1x1x1 ``Conv3d`` run as a matrix product over the voxels of a channels-last volume.

    For a batch of one and few channels PyTorch's CPU backend sends 1x1x1 convolutions to a slow generic kernel that
    also returns a channels-first map, which the next oneDNN operation then converts back; as ``F.linear`` on the
    channels-last voxels it is one BLAS call and the layout is kept. Parameters and state-dict keys are those of
    ``nn.Conv3d``.

    Shapes: ``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)``, channels-last.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.reshape(self.out_channels, self.in_channels)
        return F.linear(x.permute(0, 2, 3, 4, 1), weight, self.bias).permute(0, 4, 1, 2, 3)


class PatchExpandConvTranspose3d(nn.ConvTranspose3d):
    """A ``ConvTranspose3d`` whose kernel equals its stride, run as one matrix product and a rearrangement.

    With ``kernel_size == stride`` (no padding, no groups) every input voxel expands into its own ``k^3`` output cell
    by one matrix: the patch expanding of Swin-UNet. PyTorch's CPU backend has no oneDNN kernel for this
    deconvolution and falls back to a slow generic one; as a product of the channels-last tokens with the reshaped
    weight it runs on the BLAS matrix product. Parameters and state-dict keys are those of ``nn.ConvTranspose3d``,
    so checkpoints load either way; the output is laid out channels-last.

    Shapes: ``(B, in_channels, d, h, w) -> (B, out_channels, d * k_d, h * k_h, w * k_w)``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: kernel and stride, one or one per axis.
        bias: whether the output has a bias.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int], bias: bool = True
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=kernel_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c_in, d, h, w = x.shape
        kd, kh, kw = self.kernel_size
        # weight (C_in, C_out, kd, kh, kw) -> (C_in, kd * kh * kw * C_out): each cell voxel's channels contiguous
        weight = self.weight.permute(0, 2, 3, 4, 1).reshape(c_in, -1)
        tokens = x.permute(0, 2, 3, 4, 1).reshape(-1, c_in)  # a view for channels-last input
        bias = self.bias
        if bias is not None:
            y = torch.addmm(bias.repeat(kd * kh * kw), tokens, weight)
        else:
            y = torch.mm(tokens, weight)
        # (B, d, h, w, kd, kh, kw, C_out) -> (B, d, kd, h, kh, w, kw, C_out) -> channels-last (B, C_out, D, H, W)
        y = y.reshape(b, d, h, w, kd, kh, kw, self.out_channels).permute(0, 1, 4, 2, 5, 3, 6, 7)
        return y.reshape(b, d * kd, h * kh, w * kw, self.out_channels).permute(0, 4, 1, 2, 3)


class GatedFusion3D(nn.Module):
    """Gated fusion of an upsampled coarse map with a finer skip, then a depthwise-separable residual refinement.

    A 1x1x1 convolution of both inputs predicts a per-voxel, per-channel gate ``g`` in ``(0, 1)`` that admits the
    skip: ``coarse + g * skip`` (an attention gate, as in Attention U-Net). The net lets fine detail in where the
    coarse map is unsure, near boundaries, and shuts out skip activations elsewhere, while the semantic coarse path
    passes ungated (a convex ``g * coarse + (1 - g) * skip`` halved its gradient at every level and trained
    markedly slower). A 3x3x3 depthwise + 1x1x1 pointwise convolution then mixes the fused map with its
    neighbourhood, at a fraction of the cost of a dense 3x3x3 convolution.

    Shapes: ``(B, channels, D, H, W), (B, channels, D, H, W) -> (B, channels, D, H, W)``.

    Args:
        channels: width of both inputs and of the output.
        norm: norm of the refinement, a MONAI norm name or ``(name, kwargs)``.
        act: activation of the refinement, a MONAI activation name or ``(name, kwargs)``.
        kernels: ``"3d"`` or ``"2+1d"``: the depthwise convolution whole or across slices
            (:class:`~refineformer3d.networks.blocks.Conv2Plus1d`).
    """

    def __init__(
        self,
        channels: int,
        norm: str | tuple = ("group", {"num_groups": 4}),
        act: str | tuple = "relu",
        kernels: str = "3d",
    ) -> None:
        super().__init__()
        self.gate = PointwiseConv3d(2 * channels, channels)
        self.refine = nn.Sequential(
            conv3d(channels, channels, 3, groups=channels, bias=False, kernels=kernels),
            get_norm_layer(norm, 3, channels),
            get_act_layer(act),
            PointwiseConv3d(channels, channels),
        )

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # gate(cat([coarse, skip])) as two products accumulated on the channels-last voxels: no concatenated copy,
        # and the gated sum in one fused multiply-add; this runs at the stem's 1/2 resolution, where the decoder's
        # time goes to passes over memory rather than to arithmetic
        c = coarse.shape[1]
        weight = self.gate.weight.reshape(c, 2 * c)
        logit = F.linear(coarse.permute(0, 2, 3, 4, 1), weight[:, :c], self.gate.bias)
        skip_voxels = skip.permute(0, 2, 3, 4, 1).reshape(-1, c).to(logit.dtype)
        # go on with what addmm_ returns, not its base tensor: the ONNX exporter does not carry a view's update back
        summed = logit.view(-1, c).addmm_(skip_voxels, weight[:, c:].t().to(logit.dtype))
        g = summed.sigmoid_().view(logit.shape).permute(0, 4, 1, 2, 3)
        x = torch.addcmul(coarse, g, skip)
        return x + self.refine(x)


def space_to_depth(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Fold each ``factor^3`` cell into channels: ``(B, C, D, H, W) -> (B, C * factor^3, D/f, H/f, W/f)``.

    Lossless and parameter-free; the result is laid out channels-last, as the decoder's convolutions prefer.
    """
    b, c, d, h, w = x.shape
    f = factor
    x = x.reshape(b, c, d // f, f, h // f, f, w // f, f).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, d // f, h // f, w // f, c * f * f * f).permute(0, 4, 1, 2, 3)


class RefineHead3D(nn.Module):
    """Top-down refine decoder that ends at full resolution with a learned upsampling.

    The pyramid it decodes is a convolutional ``stem`` on the image (at ``1 / stem_stride``) followed by the encoder
    stages. Every encoder stage is projected by a light MLP (1x1x1 ``Conv3d`` + norm + activation); starting from the
    coarsest, the running map is upsampled by a transposed convolution (kernel = stride = the scale between the two
    levels, which also narrows it to the finer width) and merged with the finer map by :class:`GatedFusion3D`.
    The last step to full resolution is a transposed convolution that reads the stem-level map together with the
    image itself, folded into the stem grid by :func:`space_to_depth`: every output voxel sees the raw intensities
    of its own cell, at no full-resolution cost besides the upsampling, an activation and the 1x1x1 classifier.

    With ``deep_supervision`` a 1x1x1 ``Conv3d`` also classifies the first ``deep_supr_num`` pyramid levels (stem,
    first stage, ...); in training mode ``forward`` then returns ``[logits, aux_1, ..., aux_k]``, finest first, the
    layout that ``monai.losses.DeepSupervisionLoss`` expects (it resizes the target to each output itself).

    Shapes: ``[(B, in_channels[i], D / r_i, H / r_i, W / r_i)], (B, image_channels, D, H, W)
    -> (B, out_channels, D, H, W)`` with ``r_0 = reduction``.

    Args:
        in_channels: channels of each encoder stage, finest first.
        out_channels: number of classes.
        image_channels: channels of the input image.
        decoder_channels: decoder width at each encoder stage, finest first.
        refine_channels: decoder width at full resolution and at the stem.
        scale_factors: ``scale_factors[i]`` is the size ratio of stage ``i + 1`` to stage ``i``.
        reduction: reduction of the first encoder stage.
        stem_stride: stride of the stem; must divide ``reduction``.
        norm: norm of projections, stem and fusions, a MONAI norm name or ``(name, kwargs)``.
        act: activation of projections, stem, fusions and the full-resolution map.
        deep_supervision: build auxiliary classifiers and return them in training mode.
        deep_supr_num: number of auxiliary classifiers.
        kernels: ``"3d"`` or ``"2+1d"``: the stem's and the fusions' convolutions whole or across slices
            (:class:`~refineformer3d.networks.blocks.Conv2Plus1d`).

    Raises:
        ValueError: if the per-stage sequences disagree in length, the stem does not fit the first stage, or
            ``deep_supr_num`` does not fit the pyramid.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        image_channels: int,
        decoder_channels: Sequence[int],
        refine_channels: Sequence[int] = (16, 16),
        scale_factors: Sequence[int] = (2, 2, 2),
        reduction: int = 4,
        stem_stride: int = 2,
        norm: str | tuple = ("group", {"num_groups": 4}),
        act: str | tuple = "relu",
        deep_supervision: bool = False,
        deep_supr_num: int = 3,
        kernels: str = "3d",
    ) -> None:
        super().__init__()
        num_stages = len(in_channels)
        if len(decoder_channels) != num_stages:
            raise ValueError(f"decoder_channels needs one width per stage ({num_stages}), got {len(decoder_channels)}.")
        if len(scale_factors) != num_stages - 1:
            raise ValueError(f"scale_factors needs {num_stages - 1} values, got {len(scale_factors)}.")
        if len(refine_channels) != 2:
            raise ValueError(f"refine_channels needs two widths (full resolution, stem), got {list(refine_channels)}.")
        if stem_stride < 2 or reduction % stem_stride or reduction == stem_stride:
            raise ValueError(
                f"stem_stride ({stem_stride}) must be at least 2 and a proper divisor of the first stage's "
                f"reduction ({reduction})."
            )
        if deep_supervision and not 1 <= deep_supr_num <= num_stages:
            raise ValueError(f"deep_supr_num must be in [1, {num_stages}], got {deep_supr_num}.")
        full_channels, stem_channels = refine_channels
        # pyramid levels: 0 is the stem, i + 1 is encoder stage i
        channels = (stem_channels, *decoder_channels)
        self.stem_stride = stem_stride
        self.deep_supervision = deep_supervision
        self.deep_supr_num = deep_supr_num if deep_supervision else 0

        self.stem = nn.Sequential(
            conv3d(image_channels, stem_channels, 2 * stem_stride - 1, stem_stride, bias=False, kernels=kernels),
            get_norm_layer(norm, 3, stem_channels),
            get_act_layer(act),
        )
        self.laterals = nn.ModuleList(
            [
                nn.Sequential(PointwiseConv3d(c_in, c, bias=False), get_norm_layer(norm, 3, c), get_act_layer(act))
                for c_in, c in zip(in_channels, decoder_channels)
            ]
        )
        # ups[j] and fusions[j] are the j-th top-down step, from the coarsest level: level L - j to level L - j - 1
        scales = (reduction // stem_stride, *scale_factors)
        top_down = range(num_stages - 1, -1, -1)
        self.ups = nn.ModuleList(
            [PatchExpandConvTranspose3d(channels[i + 1], channels[i], kernel_size=scales[i]) for i in top_down]
        )
        self.fusions = nn.ModuleList([GatedFusion3D(channels[i], norm, act, kernels) for i in top_down])
        self.upsample = PatchExpandConvTranspose3d(
            stem_channels + image_channels * stem_stride**3, full_channels, kernel_size=stem_stride
        )
        self.act = get_act_layer(act)
        self.classifier = nn.Conv3d(full_channels, out_channels, 1)
        #: hidden values per slab of the full-resolution step in CPU inference (1 MiB of float32, within a core's L2)
        self.slab_values = 1 << 18
        self.aux_heads = nn.ModuleList([PointwiseConv3d(channels[i], out_channels) for i in range(self.deep_supr_num)])

    def _classify_full_resolution(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``classifier(act(upsample(cat([x, space_to_depth(image)]))))``, computed on the stem grid.

        A transposed convolution whose kernel equals its stride maps each stem voxel to its own ``f^3`` output voxels
        by one matrix, and the classifier is a matrix per voxel, so both run on the stem grid and only the
        ``out_channels`` logits are ever laid out at full resolution. Run as the modules, the same arithmetic spent
        most of its time outside the FLOPs: folding and concatenating the image, a deconvolution PyTorch has no
        oneDNN path for, and writing and re-reading a ``full_channels``-wide full-resolution map. The weights stay
        those of ``upsample`` and ``classifier``.

        In one pass (training, tracing, GPUs) the image's share of ``upsample`` is a convolution with kernel and
        stride ``f``, which oneDNN runs on the image in place, and the stem map's share a matrix product added into
        it. In CPU inference the stem grid goes in slabs of a few slices instead, each slab's image cells gathered
        from the channels-last image, so that the ``f^3 * full_channels`` hidden values of a slab are still in the
        cache when the activation and the classifier read them (a forward of the tiny variant at 128^3: 0.137 against
        0.174 s in one pass, on a quiet 2-core CPU).

        Shapes: ``(B, stem_channels, d, h, w), (B, image_channels, D, H, W) -> (B, out_channels, D, H, W)`` with
        ``D = f * d`` etc., ``f`` the stem stride; the logits are laid out channels-last.
        """
        f = self.stem_stride
        b, c_stem, d, h, w = x.shape
        c_image = image.shape[1]
        # upsample's weight: (c_stem + c_image * f^3, full_channels, f, f, f), its inputs in space_to_depth's order
        weight = self.upsample.weight.to(image.dtype)
        c_in, c_full = weight.shape[0], weight.shape[1]
        cell = f * f * f
        # columns ordered (output sub-voxel, channel), so that each output voxel's channels are contiguous
        columns = weight.permute(0, 2, 3, 4, 1).reshape(c_in, cell * c_full)
        bias = self.upsample.bias
        if bias is not None:
            bias = bias.repeat(cell).to(image.dtype)
        slab = d
        if not self.training and not torch.jit.is_tracing() and image.device.type == "cpu":
            slab = max(1, self.slab_values // (b * h * w * cell * c_full))
        if slab >= d:
            # (c_image, i, j, k, full, a, b, c) -> (a, b, c, full, c_image, i, j, k): a strided convolution's weight
            image_weight = weight[c_stem:].reshape(c_image, f, f, f, c_full, f, f, f).permute(5, 6, 7, 4, 0, 1, 2, 3)
            image_weight = image_weight.reshape(cell * c_full, c_image, f, f, f)
            hidden = F.conv3d(image, image_weight, bias, stride=f)  # (B, f^3 * full, d, h, w)
            hidden = hidden.permute(0, 2, 3, 4, 1).reshape(-1, cell * c_full)  # a view: oneDNN gives channels-last
            tokens = x.permute(0, 2, 3, 4, 1).reshape(-1, c_stem).to(hidden.dtype)
            logits = self._classify_hidden(hidden.addmm_(tokens, columns[:c_stem].to(hidden.dtype)), b, d, h, w)
            return logits.reshape(b, d * f, h * f, w * f, -1).permute(0, 4, 1, 2, 3)
        # the image's rows reordered cell-major, the order in which a channels-last image holds each cell
        cell_rows = columns[c_stem:].reshape(c_image, cell, -1).transpose(0, 1).reshape(c_in - c_stem, -1)
        columns = torch.cat([columns[:c_stem], cell_rows])
        out = torch.empty(0)
        for i in range(0, d, slab):
            n = min(slab, d - i)
            tokens = x[:, :, i : i + n].permute(0, 2, 3, 4, 1)  # (B, n, h, w, c_stem)
            cells = image[:, :, i * f : (i + n) * f].permute(0, 2, 3, 4, 1)
            cells = cells.reshape(b, n, f, h, f, w, f, c_image).permute(0, 1, 3, 5, 2, 4, 6, 7)
            inputs = torch.cat([tokens.to(image.dtype), cells.reshape(b, n, h, w, cell * c_image)], dim=-1)
            if bias is not None:
                hidden = torch.addmm(bias, inputs.reshape(-1, c_in), columns)
            else:
                hidden = torch.mm(inputs.reshape(-1, c_in), columns)
            logits = self._classify_hidden(hidden, b, n, h, w)
            if i == 0:
                out = torch.empty((b, d * f, h * f, w * f, logits.shape[-1]), dtype=logits.dtype, device=x.device)
            # the rearrangement into the output is the one copy the slab's logits need anyway
            out[:, i * f : (i + n) * f].view(logits.shape).copy_(logits)
        return out.permute(0, 4, 1, 2, 3)

    def _classify_hidden(self, hidden: torch.Tensor, b: int, d: int, h: int, w: int) -> torch.Tensor:
        """Activation and classifier of the hidden map ``(B * d * h * w, f^3 * full_channels)`` of a stem slab.

        Returns the logits as ``(B, d, f, h, f, w, f, out_channels)``, a view: laid out as ``(B, D, H, W, K)`` they
        are channels-last logits, a copy that moves runs of ``f * K`` values (a channels-first one would gather single
        values, five times slower).
        """
        f = self.stem_stride
        out_channels = self.classifier.out_channels
        weight = self.classifier.weight.reshape(out_channels, -1).to(hidden.dtype)
        logits = F.linear(self.act(hidden).reshape(-1, weight.shape[1]), weight, self.classifier.bias)
        return logits.reshape(b, d, h, w, f, f, f, out_channels).permute(0, 1, 4, 2, 5, 3, 6, 7)

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips: list[torch.Tensor] = [self.stem(image)]  # pyramid levels, finest first
        for i, lateral in enumerate(self.laterals):
            skips.append(lateral(features[i]))
        x = skips[-1]
        keep_maps = self.training and self.deep_supervision
        maps: list[torch.Tensor] = []  # fused maps, finest first, kept for the auxiliary classifiers
        for j, (up, fusion) in enumerate(zip(self.ups, self.fusions)):
            x = fusion(up(x), skips[len(skips) - 2 - j])
            if keep_maps:
                maps.insert(0, x)
        logits = self._classify_full_resolution(x, image)
        if keep_maps:
            outputs = [logits]
            for i, head in enumerate(self.aux_heads):
                outputs.append(head(maps[i]))
            return outputs
        return logits
