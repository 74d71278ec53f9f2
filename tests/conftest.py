"""Shared fixtures: one tiny synthetic BraTS dataset per test session, and the bundle's paths."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"


@pytest.fixture(scope="session")
def tiny_brats(tmp_path_factory) -> Path:
    """A BraTS 2017-layout dataset small enough for CPU tests: 8 labelled and 2 unlabelled studies."""
    from refineformer3d.data import make_dataset

    return make_dataset(tmp_path_factory.mktemp("brats"), cases=8, validation_cases=2, seed=0, shape=(64, 64, 48))
