"""Weights of one label scheme as the starting point of another."""

from __future__ import annotations

import os

import torch

__all__ = ["regions_from_classes"]


def regions_from_classes(
    source: str | os.PathLike, output: str | os.PathLike, classifier: str = "decode_head.classifier"
) -> dict[str, torch.Tensor]:
    """Writes a ``classes`` state dict (softmax: background, tumour core, edema) as a ``regions`` one (sigmoid: TC,
    WT, ET) to start fine-tuning from.

    Read as sigmoids, softmax rows would call every background voxel tumour core. A softmax's log-odds of a class
    against background are the difference of their logits, which the last layer gives exactly as a difference of its
    rows: TC = core - background, WT = mean(core, edema) - background (a soft union), ET = core - background (the
    classes scheme has no enhancing class; fine-tuning separates it). Only the classifier changes.

    Args:
        source: a state dict file of a ``classes`` network (float16 or float32).
        output: the file to write (float32).
        classifier: the prefix of the last layer's ``weight`` and ``bias``.

    Returns:
        The state dict written.

    Raises:
        ValueError: if ``source`` has no such classifier, or not three classes.
    """
    state = {k: v.float() if v.is_floating_point() else v for k, v in torch.load(source, weights_only=True).items()}
    for name in ("weight", "bias"):
        rows = state.get(f"{classifier}.{name}")
        if rows is None or rows.shape[0] != 3:
            raise ValueError(f"{source}: no 3-class {classifier}.{name} to convert")
        background, core, edema = rows
        state[f"{classifier}.{name}"] = torch.stack(
            [core - background, (core + edema) / 2 - background, core - background]
        )
    torch.save(state, output)
    return state
