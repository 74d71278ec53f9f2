"""SegFormer 2-D (MiT-B0 ... B5) from Hugging Face ``transformers``, run slice by slice on 3-D volumes.

The 2-D SegFormer is where this project started: ``SegformerForSemanticSegmentation`` fine-tuned on tumour slices.
:class:`SegFormer2D` keeps that model exactly as ``transformers`` builds it and only changes how volumes reach it:
every slice across :attr:`SegFormer2D.slice_axis` becomes one image of a batch, and the 1/4-resolution logits come
back to the slice size by bilinear upsampling. Volumes in, volumes out, so the bundle's sliding-window inferer,
losses and metrics serve it as they serve the 3-D networks, and the two are scored in 3-D alike.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from refineformer3d.networks.registry import build_variant, register_model

__all__ = [
    "SegFormer2D",
    "SEGFORMER2D_VARIANTS",
    "segformer2d_b0",
    "segformer2d_b1",
    "segformer2d_b2",
    "segformer2d_b3",
    "segformer2d_b4",
    "segformer2d_b5",
]

# the SegformerConfig fields that fix the encoder's weight shapes: a pretrained encoder must agree on all of them
_ENCODER_FIELDS = ("hidden_sizes", "depths", "num_attention_heads", "sr_ratios", "mlp_ratios", "patch_sizes", "strides")


def _hub_offline() -> bool:
    # read at call time, not at import as huggingface_hub does, so that a caller (or a test) can set it late
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


class SegFormer2D(nn.Module):
    """Hugging Face ``SegformerForSemanticSegmentation`` (a MiT encoder and the all-MLP head) applied to axial slices.

    The network is ``transformers``' own (``self.model``), built from a ``SegformerConfig`` with ``num_channels =
    in_channels`` and ``num_labels = out_channels``; ``self.model.save_pretrained(DIR)`` therefore writes a folder that
    ``SegformerForSemanticSegmentation.from_pretrained(DIR)`` reads back. Every slice across ``slice_axis`` is one image
    of the 2-D batch, so a ``(B, C, 128, 128, 8)`` crop is a batch of ``8 B`` images of ``128 x 128``.

    Shapes: ``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)``. With the default ``slice_axis=2`` slices are
    cut across ``W``, the last spatial axis, which is the axial (inferior-superior) one once the bundle has reoriented
    the study to RAS. The two in-plane dimensions must be at least :attr:`min_slice_size` (29 for the MiT defaults: the
    first stage's key/value reduction needs 8 x 8 tokens); they need not be multiples of anything, and any number of
    slices works. Unlike :class:`~refineformer3d.networks.SegFormer3D`, the head's batch norm sees every slice of the
    batch, so one crop of a few slices is already a batch of several images.

    Pretrained weights (``pretrained``): a Hugging Face hub name (``"nvidia/mit-b0"`` ... ``"nvidia/mit-b5"``, the
    ImageNet-1k MiT encoders) or a local folder written by ``save_pretrained``. Only the encoder is loaded; the head
    stays freshly initialised. A hub name is looked up in the local Hugging Face cache first and downloaded only when
    absent and ``HF_HUB_OFFLINE`` is not set. When the checkpoint has another number of input channels (3, RGB, for
    the MiT encoders) the first patch embedding is adapted: each of the ``in_channels`` kernels is the mean of the
    checkpoint's kernels times ``checkpoint_channels / in_channels``, so an input whose channels are all equal to ``x``
    gives the same first-layer response as the RGB image ``(x, x, x)`` did, and no MRI sequence is tied to a colour.

    Args:
        in_channels: input channels (4 MRI sequences for BraTS); ``SegformerConfig.num_channels``.
        out_channels: classes (``SegformerConfig.num_labels``).
        hidden_sizes: token width per encoder stage.
        depths: transformer blocks per stage.
        num_attention_heads: attention heads per stage.
        sr_ratios: key/value spatial reduction per stage.
        mlp_ratios: Mix-FFN expansion per stage.
        patch_sizes: patch-embedding kernel per stage.
        strides: patch-embedding stride per stage.
        decoder_hidden_size: width of the all-MLP head (256 for B0/B1, 768 from B2 up).
        drop_path_rate: stochastic depth of the last encoder block (linear from 0), as ``transformers`` sets it.
        classifier_dropout_prob: dropout before the head's classifier.
        slice_axis: the spatial axis (0, 1 or 2 of ``D, H, W``) across which slices are cut.
        pretrained: ``"none"`` (or ``None``) to train from scratch, a hub name or a local folder; see above.
        cache_dir: the Hugging Face cache to read and fill (``None``: its default, ``HF_HUB_CACHE``).

    Raises:
        ValueError: for inconsistent arguments; for a pretrained encoder of another architecture, or one that cannot be
            found (not a folder, not cached, and the hub unreachable or ``HF_HUB_OFFLINE`` set); and in ``forward`` for
            inputs that are not 5-D or whose slices are smaller than :attr:`min_slice_size`.

    Example:
        >>> net = SegFormer2D(in_channels=4, out_channels=3)  # MiT-B0, as ``create_model("segformer2d_b0")``
        >>> net(torch.zeros(1, 4, 96, 128, 5)).shape
        torch.Size([1, 3, 96, 128, 5])
    """

    variant_prefix = "segformer2d"

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        hidden_sizes: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_attention_heads: Sequence[int] = (1, 2, 5, 8),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratios: Sequence[int] = (4, 4, 4, 4),
        patch_sizes: Sequence[int] = (7, 3, 3, 3),
        strides: Sequence[int] = (4, 2, 2, 2),
        decoder_hidden_size: int = 256,
        drop_path_rate: float = 0.1,
        classifier_dropout_prob: float = 0.1,
        slice_axis: int = 2,
        pretrained: str | None = "none",
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        stages = dict(
            hidden_sizes=hidden_sizes,
            depths=depths,
            num_attention_heads=num_attention_heads,
            sr_ratios=sr_ratios,
            mlp_ratios=mlp_ratios,
            patch_sizes=patch_sizes,
            strides=strides,
        )
        lengths = {name: len(value) for name, value in stages.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"per-stage arguments must have one length, got {lengths}.")
        bad_heads = [(h, n) for h, n in zip(hidden_sizes, num_attention_heads) if h % n]
        if bad_heads:
            raise ValueError(
                f"each hidden size must be divisible by its number of heads, got (size, heads) {bad_heads}."
            )
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2 (a spatial axis of D, H, W), got {slice_axis!r}.")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}.")

        self.slice_axis = slice_axis
        self.config = SegformerConfig(
            num_channels=in_channels,
            num_labels=out_channels,
            num_encoder_blocks=len(depths),
            decoder_hidden_size=decoder_hidden_size,
            drop_path_rate=drop_path_rate,
            classifier_dropout_prob=classifier_dropout_prob,
            **{name: list(value) for name, value in stages.items()},
        )
        self.model = SegformerForSemanticSegmentation(self.config)
        # stage i works at 1/r_i of the slice and reduces keys/values by s_i: it needs at least s_i tokens per side
        reductions = [math.prod(strides[: i + 1]) for i in range(len(strides))]
        self.min_slice_size = max(r * (s - 1) + 1 for r, s in zip(reductions, sr_ratios))
        if pretrained is not None and str(pretrained).lower() != "none":
            self.load_pretrained_encoder(pretrained, cache_dir=cache_dir)

    @property
    def spatial_divisor(self) -> int:
        """1: unlike the 3-D networks, no dimension need be a multiple of anything (slices need a minimum size)."""
        return 1

    @torch.jit.unused
    def check_input_size(self, shape: Sequence[int]) -> None:
        """Raise a ``ValueError`` unless ``shape`` is ``(B, C, D, H, W)`` with slices of at least ``min_slice_size``."""
        dims = tuple(int(s) for s in shape)
        if len(dims) != 5:
            raise ValueError(f"expected a (B, C, D, H, W) input, got shape {dims}.")
        in_plane = [s for axis, s in enumerate(dims[2:]) if axis != self.slice_axis]
        if min(in_plane) < self.min_slice_size:
            raise ValueError(
                f"slices of {in_plane[0]} x {in_plane[1]} (spatial dims {dims[2:]}, slices across axis "
                f"{self.slice_axis}) are too small: each in-plane dimension must be at least {self.min_slice_size}."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)`` logits, one 2-D forward per slice."""
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            self.check_input_size(x.shape)
        batch, channels = x.shape[:2]
        # (B, C, D, H, W) -> (B, S, C, P, Q): the slice axis next to the batch, then slices become images
        x = x.movedim(self.slice_axis + 2, 1)
        slices, height, width = x.shape[1], x.shape[3], x.shape[4]
        logits = self.model(pixel_values=x.reshape(batch * slices, channels, height, width)).logits
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits.reshape(batch, slices, -1, height, width).movedim(1, self.slice_axis + 2)

    def load_pretrained_encoder(self, source: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> None:
        """Load a pretrained MiT encoder (hub name or ``save_pretrained`` folder) into ``self.model.segformer``.

        The cached copy is used when there is one; the hub is asked only when there is none and ``HF_HUB_OFFLINE`` is
        not set. The first patch embedding is adapted to :attr:`config` ``.num_channels`` as the class docstring says.

        Raises:
            ValueError: in one line, when the weights cannot be found or belong to another MiT size.
        """
        from transformers import SegformerModel

        source = os.fspath(source)
        local = os.path.isdir(source)
        try:
            try:
                encoder = SegformerModel.from_pretrained(source, cache_dir=cache_dir, local_files_only=True)
            except OSError:
                if local or _hub_offline():
                    raise
                encoder = SegformerModel.from_pretrained(source, cache_dir=cache_dir)
        except OSError:
            where = (
                f"the folder {source!r} holds no loadable SegFormer/MiT model"
                if local
                else f"{source!r} is neither a local folder nor in the Hugging Face cache"
                f" ({cache_dir or 'HF_HUB_CACHE'}), and the hub is "
                + ("off (HF_HUB_OFFLINE is set)" if _hub_offline() else "unreachable")
            )
            raise ValueError(
                f"cannot load pretrained weights: {where}; fetch them where there is network with "
                f"`hf download {source} --local-dir DIR` and pass that folder, or use pretrained 'none'."
            ) from None  # the one line says it all; transformers' own message is about its internals
        mismatch = {
            f: (list(getattr(encoder.config, f)), list(getattr(self.config, f)))
            for f in _ENCODER_FIELDS
            if list(getattr(encoder.config, f)) != list(getattr(self.config, f))
        }
        if mismatch:
            raise ValueError(
                f"pretrained weights {source!r} are another MiT size than this network: (theirs, ours) {mismatch}; "
                "choose the matching segformer2d variant."
            )
        state = encoder.state_dict()
        key = "stages.0.patch_embeddings.proj.weight"
        weight = state[key]
        channels = self.config.num_channels
        if weight.shape[1] != channels:
            state[key] = weight.mean(1, keepdim=True).repeat(1, channels, 1, 1) * (weight.shape[1] / channels)
        self.model.segformer.load_state_dict(state)


#: The published MiT sizes (SegFormer paper, Table 1; ``nvidia/mit-b0`` ... ``nvidia/mit-b5``); heads and reductions
#: are those of ``SegformerConfig``'s defaults for all of them.
SEGFORMER2D_VARIANTS: dict[str, dict[str, Any]] = {
    "b0": dict(hidden_sizes=(32, 64, 160, 256), depths=(2, 2, 2, 2), decoder_hidden_size=256),
    "b1": dict(hidden_sizes=(64, 128, 320, 512), depths=(2, 2, 2, 2), decoder_hidden_size=256),
    "b2": dict(hidden_sizes=(64, 128, 320, 512), depths=(3, 4, 6, 3), decoder_hidden_size=768),
    "b3": dict(hidden_sizes=(64, 128, 320, 512), depths=(3, 4, 18, 3), decoder_hidden_size=768),
    "b4": dict(hidden_sizes=(64, 128, 320, 512), depths=(3, 8, 27, 3), decoder_hidden_size=768),
    "b5": dict(hidden_sizes=(64, 128, 320, 512), depths=(3, 6, 40, 3), decoder_hidden_size=768),
}


@register_model
def segformer2d_b0(**overrides: Any) -> SegFormer2D:
    """SegFormer-B0 on slices: 3.7M parameters at 4 channels and 3 classes (3.8M at 3 and 150, as published)."""
    return build_variant(SegFormer2D, SEGFORMER2D_VARIANTS["b0"], overrides)


@register_model
def segformer2d_b1(**overrides: Any) -> SegFormer2D:
    """SegFormer-B1 on slices: MiT-B1 widths, 13.7M parameters."""
    return build_variant(SegFormer2D, SEGFORMER2D_VARIANTS["b1"], overrides)


@register_model
def segformer2d_b2(**overrides: Any) -> SegFormer2D:
    """SegFormer-B2 on slices: deeper MiT-B2 and the 768-wide head, 27.4M parameters."""
    return build_variant(SegFormer2D, SEGFORMER2D_VARIANTS["b2"], overrides)


@register_model
def segformer2d_b3(**overrides: Any) -> SegFormer2D:
    """SegFormer-B3 on slices: 18 blocks in stage 3, 47.2M parameters."""
    return build_variant(SegFormer2D, SEGFORMER2D_VARIANTS["b3"], overrides)


@register_model
def segformer2d_b4(**overrides: Any) -> SegFormer2D:
    """SegFormer-B4 on slices: 27 blocks in stage 3, 64.0M parameters."""
    return build_variant(SegFormer2D, SEGFORMER2D_VARIANTS["b4"], overrides)


@register_model
def segformer2d_b5(**overrides: Any) -> SegFormer2D:
    """SegFormer-B5 on slices: 40 blocks in stage 3, 84.6M parameters."""
    return build_variant(SegFormer2D, SEGFORMER2D_VARIANTS["b5"], overrides)
