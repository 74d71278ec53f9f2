"""Knowledge distillation (Hinton et al. 2015) from a frozen teacher into the network a bundle trains.

The training engine stays MONAI's ``SupervisedTrainer``: :class:`TeacherPrepareBatch` (a MONAI ``PrepareBatch``)
appends the teacher's logits to each batch's label as extra channels, and :class:`DistillationLoss` splits them off
again, so ``DeepSupervisionLoss`` resizes label and soft targets together for every auxiliary output.
``bundle/configs/distill.json`` declares the whole set-up over ``train.json``.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.engines.utils import PrepareBatch, default_prepare_batch

from refineformer3d.data.errors import InputError

__all__ = ["frozen_teacher", "TeacherPrepareBatch", "DistillationLoss"]


def frozen_teacher(network: nn.Module, ckpt_path: str, map_location: str | torch.device = "cpu") -> nn.Module:
    """``network`` with the weights of ``ckpt_path`` (a bundle ``model.pt``), in eval mode and without gradients.

    Raises:
        InputError: one line naming ``ckpt_path`` if it cannot be read or does not fit ``network``.
    """
    try:
        state = torch.load(ckpt_path, map_location=map_location, weights_only=True)
        network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError.printed([f"teacher checkpoint {ckpt_path}: cannot be loaded ({first})"]) from None
    network.to(map_location).eval().requires_grad_(False)
    return network


class TeacherPrepareBatch(PrepareBatch):
    """MONAI's default batch preparation, then ``label`` becomes ``cat([label, teacher(image)], dim=1)``.

    Shapes: image ``(B, C, D, H, W)`` and label ``(B, 1, D, H, W)`` -> image and ``(B, 1 + K, D, H, W)``, ``K`` the
    teacher's output channels (its logits at temperature 1).

    Args:
        teacher: the frozen teacher (see :func:`frozen_teacher`); it must return one logits tensor in eval mode.
    """

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        with torch.no_grad():
            logits = self.teacher(image)
        return image, torch.cat([label, logits.to(label.dtype)], dim=1)


class DistillationLoss(nn.Module):
    """``loss(input, label) + weight * T**2 * KL(softmax(teacher / T) || softmax(input / T))``.

    The KL term is averaged over voxels; ``T**2`` keeps its gradients on the scale of the supervised loss (Hinton et
    al.). Softmax over channels: the ``classes`` label scheme (mutually exclusive classes), as ``train.json``'s
    ``DiceCELoss(softmax=True)``.

    Shapes: ``input (B, K, D, H, W)``, ``target (B, 1 + K, D, H, W)`` (label, then the teacher's logits, as
    :class:`TeacherPrepareBatch` makes it) -> a scalar.

    Args:
        loss: the supervised loss on ``(input, label)``, e.g. MONAI's ``DiceCELoss``.
        temperature: softmax temperature ``T`` of both distributions (> 0).
        weight: weight of the distillation term (>= 0).

    Raises:
        ValueError: for a non-positive temperature or a negative weight, and in ``forward`` when ``target`` does
            not hold one label channel plus one channel per class of ``input``.
    """

    def __init__(self, loss: nn.Module, temperature: float = 2.0, weight: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        if weight < 0:
            raise ValueError(f"weight must be non-negative, got {weight}.")
        self.loss = loss
        self.temperature = temperature
        self.weight = weight

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape[1] != 1 + input.shape[1]:
            raise ValueError(
                f"target needs 1 label channel and {input.shape[1]} teacher channels, got {target.shape[1]} "
                "channels; is TeacherPrepareBatch the trainer's prepare_batch?"
            )
        label, teacher = target[:, :1], target[:, 1:]
        t = self.temperature
        kl = F.kl_div(
            F.log_softmax(input.float() / t, dim=1),
            F.log_softmax(teacher.float() / t, dim=1),
            reduction="none",
            log_target=True,
        )
        return self.loss(input, label) + self.weight * t * t * kl.sum(dim=1).mean()
