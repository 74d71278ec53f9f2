"""Shared fixtures: one tiny synthetic BraTS dataset per test session, and the bundle's paths."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
SHIPPED_WEIGHTS = REPO / "bundle" / "models" / "model.pt"
SHIPPED_REGIONS_WEIGHTS = REPO / "bundle" / "models" / "model_regions.pt"
# sha256 of the shipped weights (RefineFormer3D small fine-tuned on real BraTS 2018 cases, model card). Training
# without --ckpt_dir overwrites model.pt (and the card's regions recipe model_regions.pt); the tests whose thresholds
# were measured on these weights then skip instead of failing.
SHIPPED_SHA256 = {
    SHIPPED_WEIGHTS: "8f119c60ef2747d00c1265cabd1a37ea9a211c7253d5271495fa1931a040d605",
    SHIPPED_REGIONS_WEIGHTS: "c2058eb7f510ea5e5d05bedcccbb861d1dda58a38d4a138038b12ccf5bd06296",
}
# The keys the zoo's metadata schema (meta_schema_20240725.json, downloaded by ci/verify_bundle.py) requires.
REQUIRED_METADATA = (
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)


@pytest.fixture(scope="session")
def tiny_brats(tmp_path_factory) -> Path:
    """A BraTS 2017-layout dataset small enough for CPU tests: 8 labelled and 2 unlabelled studies."""
    from refineformer3d.data import make_dataset

    return make_dataset(tmp_path_factory.mktemp("brats"), cases=8, validation_cases=2, seed=0, shape=(64, 64, 48))


def _shipped(path: Path) -> Path:
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    if digest != SHIPPED_SHA256[path]:
        pytest.skip(
            f"{path} is not the shipped file (sha256 {digest[:12]}): training replaced it; "
            f"`git checkout {path.relative_to(REPO).as_posix()}` restores it"
        )
    return path


@pytest.fixture(scope="session")
def shipped_weights() -> Path:
    """``bundle/models/model.pt`` if it is the shipped file; skips, saying so, if training replaced it."""
    return _shipped(SHIPPED_WEIGHTS)


@pytest.fixture(scope="session")
def shipped_regions_weights() -> Path:
    """``bundle/models/model_regions.pt`` (the regions scheme) if it is the shipped file; else skips, as above."""
    return _shipped(SHIPPED_REGIONS_WEIGHTS)


def run_checked(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Runs ``command`` (``cwd`` the repository root and this checkout first on ``PYTHONPATH`` unless given) and
    fails with the first error line of its output as well as the tail: MONAI wraps the real cause of a config
    error in ``Failed to evaluate ...`` chains long enough to push it out of any tail."""
    env = kwargs.pop("env", None)
    if env is None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    kwargs.setdefault("cwd", REPO)
    kwargs.setdefault("timeout", 600)
    proc = subprocess.run(command, capture_output=True, text=True, env=env, **kwargs)
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        first = next((line for line in output.splitlines() if "Error" in line or "Exception" in line), "")
        pytest.fail(f"exit {proc.returncode}: {' '.join(command[:6])} ...\nfirst error: {first}\n...\n{output[-3000:]}")
    return proc


def bundle_workflow(config_file, bundle_root, dataset_dir, workflow_type="train", **override):
    """An initialised ``ConfigWorkflow`` of the bundle's configs, with the bundle's metadata and logging."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=config_file,
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset_dir),
        **override,
    )
    wf.initialize()
    return wf
