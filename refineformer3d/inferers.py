"""Sliding-window inference that skips the network on windows outside the brain.

After the bundle's preprocessing (``NormalizeIntensityd(nonzero=True)``) every voxel outside the brain is exactly 0 in
every channel, and so is the padding ``sliding_window_inference`` adds. A window with no brain voxel therefore always
gives the network the same all-zero input: its logits are computed once per volume and reused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer

__all__ = ["SkipBackgroundWindows", "EarlyExitSlidingWindowInferer"]


class SkipBackgroundWindows:
    """A sliding-window predictor that runs ``predictor`` only on windows holding enough brain.

    A window's brain fraction is the fraction of its voxels that are non-zero in at least one channel. Windows at or
    below ``min_brain_fraction`` get the predictor's own output for an all-zero window, computed once and reused: with
    ``min_brain_fraction=0`` the stitched result is the one without skipping, since such windows are all zero.

    Shapes: ``(N, C, *roi_size) -> (N, out_channels, *roi_size)``, as ``predictor``.

    Args:
        predictor: the network (or any callable) ``sliding_window_inference`` would call; it must return one tensor.
        min_brain_fraction: windows whose brain fraction is at most this value skip ``predictor``; in ``[0, 1)``.

    Raises:
        ValueError: if ``min_brain_fraction`` is outside ``[0, 1)``.
    """

    def __init__(self, predictor: Callable[..., torch.Tensor], min_brain_fraction: float = 0.0) -> None:
        if not 0.0 <= min_brain_fraction < 1.0:
            raise ValueError(f"min_brain_fraction must be in [0, 1), got {min_brain_fraction}.")
        self.predictor = predictor
        self.min_brain_fraction = min_brain_fraction
        self.windows = 0
        self.skipped = 0
        self._background: torch.Tensor | None = None

    def background(self, like: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The predictor's output for one all-zero window shaped as ``like[:1]``: ``(1, out_channels, *roi_size)``."""
        if self._background is None or self._background.shape[2:] != like.shape[2:]:
            self._background = self.predictor(torch.zeros_like(like[:1]), *args, **kwargs)
        return self._background

    def __call__(self, windows: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        brain_fraction = (windows != 0).any(dim=1).flatten(1).float().mean(dim=1)
        keep = brain_fraction > self.min_brain_fraction
        self.windows += len(windows)
        self.skipped += int((~keep).sum())
        if bool(keep.all()):
            return self.predictor(windows, *args, **kwargs)
        background = self.background(windows, *args, **kwargs)
        out = background.expand(len(windows), *background.shape[1:]).clone()
        if bool(keep.any()):
            out[keep] = self.predictor(windows[keep], *args, **kwargs).to(out.dtype)
        return out


class EarlyExitSlidingWindowInferer(SlidingWindowInferer):
    """MONAI's :class:`~monai.inferers.SlidingWindowInferer` whose predictor is wrapped in
    :class:`SkipBackgroundWindows` when ``early_exit`` is on.

    Args:
        args: positional arguments of :class:`~monai.inferers.SlidingWindowInferer` (``roi_size``, ...).
        early_exit: whether windows without enough brain skip the network.
        min_brain_fraction: see :class:`SkipBackgroundWindows`.
        kwargs: keyword arguments of :class:`~monai.inferers.SlidingWindowInferer`.

    Attributes:
        windows: windows seen since construction (with ``early_exit`` on).
        skipped: windows that skipped the network.

    Raises:
        ValueError: if ``min_brain_fraction`` is outside ``[0, 1)``, or ``early_exit`` is combined with
            ``with_coord`` (the predictor would then receive window coordinates the all-zero window has not).

    Example:
        >>> inferer = EarlyExitSlidingWindowInferer((128, 128, 128), sw_batch_size=2, overlap=0.5, early_exit=True)
        >>> logits = inferer(image, network)  # doctest: +SKIP
    """

    def __init__(self, *args: Any, early_exit: bool = True, min_brain_fraction: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= min_brain_fraction < 1.0:
            raise ValueError(f"min_brain_fraction must be in [0, 1), got {min_brain_fraction}.")
        if early_exit and self.with_coord:
            raise ValueError("early_exit cannot be combined with with_coord=True.")
        self.early_exit = early_exit
        self.min_brain_fraction = min_brain_fraction
        self.windows = 0
        self.skipped = 0

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.early_exit:
            return super().__call__(inputs, network, *args, **kwargs)
        # one wrapper per volume: the all-zero window's logits follow the network's current weights
        predictor = SkipBackgroundWindows(network, self.min_brain_fraction)
        try:
            return super().__call__(inputs, predictor, *args, **kwargs)
        finally:
            self.windows += predictor.windows
            self.skipped += predictor.skipped
