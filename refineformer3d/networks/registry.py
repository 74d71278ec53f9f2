"""A timm-style registry of named network variants.

Each variant is a small documented function decorated with :func:`register_model`; it holds the variant's
hyperparameters and merges them with the caller's overrides, so that ``create_model("refineformer3d_small",
out_channels=4)`` and a bundle's ``{"_target_": "refineformer3d.networks.create_model", "name": ...}`` build the same
network.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

import torch.nn as nn

__all__ = ["register_model", "create_model", "list_models", "is_model", "build_variant"]

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}

_F = TypeVar("_F", bound=Callable[..., nn.Module])


def register_model(fn: _F) -> _F:
    """Register a variant function under its ``__name__``.

    Args:
        fn: a function ``(**overrides) -> nn.Module``.

    Returns:
        ``fn`` unchanged, so the decorator can stack with others.

    Raises:
        ValueError: if another function is already registered under the same name.
    """
    name = fn.__name__
    if name in _MODEL_ENTRYPOINTS and _MODEL_ENTRYPOINTS[name] is not fn:
        raise ValueError(f"a model named {name!r} is already registered.")
    _MODEL_ENTRYPOINTS[name] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered variants, optionally filtered by a shell-style ``pattern`` (``"refine*"``)."""
    names = sorted(_MODEL_ENTRYPOINTS)
    if pattern is not None:
        names = fnmatch.filter(names, pattern)
    return names


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered variant."""
    return name in _MODEL_ENTRYPOINTS


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered variant ``name``; keyword ``overrides`` replace its hyperparameters.

    Args:
        name: a name from :func:`list_models`, e.g. ``"refineformer3d_small"``.
        overrides: constructor arguments of the variant's class (``in_channels``, ``out_channels``, ``depths``, ...).

    Returns:
        The network, in training mode with freshly initialised weights.

    Raises:
        ValueError: if ``name`` is not registered; the message lists the known names.

    Example:
        >>> net = create_model("refineformer3d_tiny", in_channels=4, out_channels=3)
    """
    if name not in _MODEL_ENTRYPOINTS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}.")
    return _MODEL_ENTRYPOINTS[name](**overrides)


def build_variant(cls: Callable[..., nn.Module], hyperparameters: dict[str, Any], overrides: dict[str, Any]):
    """Instantiate ``cls`` with a variant's ``hyperparameters`` updated by the caller's ``overrides``."""
    return cls(**{**hyperparameters, **overrides})
