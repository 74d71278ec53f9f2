"""What every encoder-decoder network of the package shares: input checks, weight init, variant lookup."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from refineformer3d.networks.encoder import MixVisionTransformer3D
from refineformer3d.networks.registry import create_model, list_models

__all__ = ["MixTransformerSegNet3D"]


class MixTransformerSegNet3D(nn.Module):
    """Base of the segmentation networks: a :class:`MixVisionTransformer3D` ``encoder`` and a ``decode_head``.

    Subclasses build ``self.encoder`` and ``self.decode_head`` and call ``self.apply(self._init_weights)``.
    """

    #: prefix of the registry names of the subclass's variants, e.g. ``"refineformer3d"``
    variant_prefix: str = ""

    @property
    def spatial_divisor(self) -> int:
        """Every spatial dimension of the input must be a multiple of this number (32 for the defaults)."""
        encoder: MixVisionTransformer3D = self.encoder
        return encoder.spatial_divisor

    @torch.jit.unused
    def check_input_size(self, spatial_shape: Sequence[int]) -> None:
        """Raise a ``ValueError`` unless every dimension of ``spatial_shape`` is a multiple of :attr:`spatial_divisor`.

        ``forward`` skips it while tracing or scripting (as MONAI's SwinUNETR does), so exported graphs carry no
        Python-side checks.
        """
        dims = tuple(int(s) for s in spatial_shape)
        divisor = self.spatial_divisor
        if len(dims) != 3:
            raise ValueError(f"expected a (B, C, D, H, W) input, got spatial dims {dims}.")
        if any(s % divisor for s in dims):
            suggestion = tuple(max(divisor, math.ceil(s / divisor) * divisor) for s in dims)
            raise ValueError(
                f"spatial dims {dims} must each be divisible by {divisor} (the encoder's total stride times its "
                f"key/value reduction); pad or crop to e.g. {suggestion}."
            )

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # the SegFormer/PVT recipe: small truncated-normal linears, fan-out (He) convolutions, unit norms
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            fan_out = math.prod(m.kernel_size) * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @classmethod
    def from_variant(cls, variant: str, **overrides: Any) -> MixTransformerSegNet3D:
        """Build a registered variant of this class; ``overrides`` replace its hyperparameters.

        Args:
            variant: a short name (``"small"``) or a full registry name (``"refineformer3d_small"``).
            overrides: constructor arguments, e.g. ``in_channels=4, out_channels=3``.

        Raises:
            ValueError: if no variant of this class has that name.
        """
        names = [n for n in (variant, f"{cls.variant_prefix}_{variant}") if n in list_models()]
        model = create_model(names[0], **overrides) if names else None
        if not isinstance(model, cls):
            known = [n for n in list_models(f"{cls.variant_prefix}*")]
            raise ValueError(f"{cls.__name__} has no variant {variant!r}; known variants: {', '.join(known)}.")
        return model
