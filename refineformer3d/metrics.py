"""In-training metrics that follow the BraTS definitions where MONAI's own metrics allow.

MONAI's ``HausdorffDistanceMetric`` takes the voxel spacing only as a call argument, which the ``HausdorffDistance``
Ignite handler never passes, and answers NaN (with a warning) when a region is empty in the prediction or the
reference. BraTS scores those cases (both empty: 0 mm; one empty: the 373 mm cap of its evaluation package). This
subclass binds the spacing and applies those rules; use it as the ``metric_fn`` of MONAI's ``IgniteMetricHandler``.
Dice needs no subclass: MONAI's ``DiceMetric(ignore_empty=False)`` already scores an empty reference BraTS's way
(1 when the prediction is empty too, else 0).

What stays MONAI's: HD95 is the larger of the two directed 95th percentiles, where the BraTS package pools both
directions' distances before the percentile, so the training value can be a little higher than the package's
(``python -m refineformer3d.evaluate`` reports the package's).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.metrics import HausdorffDistanceMetric

from refineformer3d.evaluate import HD95_CAP_MM

__all__ = ["BratsHausdorffDistanceMetric"]


class BratsHausdorffDistanceMetric(HausdorffDistanceMetric):
    """MONAI's 95th-percentile Hausdorff distance in mm, finite, with the BraTS rules for empty regions.

    Args:
        spacing: voxel spacing in mm of the tensors it is given (the validation grid: the bundle's ``pixdim``).
        cap: the distance for a region empty in exactly one of prediction and reference.
        include_background: score the first channel too (``True`` for region channels without a background).
        percentile: the percentile of the surface distances (BraTS: 95).
        kwargs: the other arguments of ``HausdorffDistanceMetric`` (``reduction``, ``get_not_nans``, ...).

    Example:
        ``(B, C, D, H, W)`` binary predictions and references -> ``(B, C)`` distances in mm::

            metric = BratsHausdorffDistanceMetric(spacing=(1.0, 1.0, 1.0), include_background=True)
    """

    def __init__(
        self,
        spacing: float | Sequence[float] | None = None,
        cap: float = HD95_CAP_MM,
        include_background: bool = False,
        percentile: float = 95,
        **kwargs,
    ) -> None:
        super().__init__(include_background=include_background, percentile=percentile, **kwargs)
        self.spacing = spacing
        self.cap = float(cap)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        kwargs.setdefault("spacing", self.spacing)
        start = 0 if self.include_background else 1
        spatial = tuple(range(2, y.ndim))
        in_pred, in_ref = y_pred[:, start:].bool().any(spatial), y[:, start:].bool().any(spatial)
        distance = super()._compute_tensor(y_pred, y, **kwargs)
        distance = torch.where(in_pred & in_ref, distance, torch.full_like(distance, self.cap))
        return torch.where(~in_pred & ~in_ref, torch.zeros_like(distance), distance)
