"""The bundle served by MONAI Label, as 3D Slicer's MONAI Label module uses it.

On demand (it builds MONAI Label's own environment, about 8 GB, on first use)::

    python -m pytest -m integration tests/test_monailabel.py

``MONAILABEL_VENV`` picks the environment folder (default ``.venv-monailabel`` in the repo).
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import CONFIGS, REPO

pytestmark = pytest.mark.integration

MODEL = "refineformer3d"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 600):
    method = "POST" if data is not None else "GET"
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.headers.get("Content-Type", ""), response.read()


def _multipart(content_type: str, body: bytes) -> dict:
    """Parts of a multipart/form-data response by name: what the Slicer module reads from /infer."""
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body, policy=email.policy.HTTP
    )
    return {
        part.get_param("name", header="content-disposition"): (part.get_filename(), part.get_payload(decode=True))
        for part in message.iter_parts()
    }


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture(scope="module")
def venv() -> Path:
    path = Path(os.environ.get("MONAILABEL_VENV", REPO / ".venv-monailabel"))
    subprocess.run(["bash", str(REPO / "scripts" / "monailabel_env.sh"), str(path)], check=True, timeout=3600)
    return path


@pytest.fixture(scope="module")
def server(venv, tmp_path_factory):
    """MONAI Label on 127.0.0.1 serving the bundle, offline, over three held-out synthetic 4-D studies."""
    from refineformer3d.data import make_dataset, write_studies

    work = tmp_path_factory.mktemp("monailabel")
    # Seed 7: studies the shipped weights (seed 0 data) never saw; two labelled (for /train), one not.
    dataset = make_dataset(work / "dataset", cases=2, validation_cases=1, seed=7)
    studies = work / "studies"
    write_studies(dataset, studies)
    app = work / "app"
    subprocess.run(["bash", str(REPO / "scripts" / "monailabel_app.sh"), str(app), str(venv)], check=True)

    port = _free_port()
    log = open(work / "server.log", "w")
    # An empty synthetic-data cache: the server must never need the bundle's built-in studies.
    env = dict(
        os.environ,
        PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        REFINEFORMER3D_CACHE=str(work / "empty-cache"),
    )
    command = [
        str(venv / "bin" / "monailabel"), "start_server", "--app", str(app), "--studies", str(studies),
        "--host", "127.0.0.1", "--port", str(port),
        "--conf", "models", MODEL, "--conf", "zoo_source", "github", "--conf", "sam2", "false",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                _request(f"{url}/info/", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"MONAI Label did not start:\n{(work / 'server.log').read_text()[-4000:]}")
                time.sleep(2)
        yield {"url": url, "studies": studies, "app": app, "log": work / "server.log"}
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=60)
        log.close()


def test_info_lists_the_label_names_of_channel_def(server):
    _, body = _request(f"{server['url']}/info/")
    model = json.loads(body)["models"][MODEL]
    channel_def = json.loads((CONFIGS / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"][
        "channel_def"
    ]
    expected = {name.lower(): int(value) for value, name in channel_def.items() if name.lower() != "background"}
    assert model["labels"] == expected == {"tumour core": 1, "edema": 2}
    assert model["type"] == "segmentation"


@pytest.mark.parametrize("index", [0, 1])
def test_infer_a_4d_study_as_slicer_does(server, index, shipped_weights):
    labelled = sorted((server["studies"] / "labels" / "final").glob("*.nii.gz"))
    study = labelled[index].name[: -len(".nii.gz")]
    image = nib.load(server["studies"] / f"{study}.nii.gz")
    assert image.ndim == 4 and image.shape[-1] == 4  # one 4-D NIfTI: MONAILabel issue 1051's case

    # The Slicer module posts the form field "params" and reads a multipart answer: JSON params plus the label file.
    content_type, body = _request(
        f"{server['url']}/infer/{MODEL}?image={urllib.parse.quote(study)}",
        data=urllib.parse.urlencode({"params": "{}"}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    parts = _multipart(content_type, body)
    params = json.loads(parts["params"][1])
    assert params["label_names"] == {"tumour core": 1, "edema": 2}
    filename, payload = parts["image"]
    result = server["app"] / filename
    result.write_bytes(payload)
    label = nib.load(result)

    assert label.shape == image.shape[:3]
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    values = np.asarray(label.dataobj)
    assert set(np.unique(values)) <= {0, 1, 2} and {1, 2} <= set(np.unique(values))
    # On the input's grid, not just its shape: the shipped weights find the tumour where the reference has it.
    truth = np.asarray(nib.load(labelled[index]).dataobj)
    assert _dice(values > 0, truth > 0) > 0.7


def test_train_one_epoch_from_monai_label(server):
    model = server["app"] / "model" / MODEL / "models" / "model.pt"
    before = model.stat().st_mtime_ns
    _, body = _request(
        f"{server['url']}/train/{MODEL}?run_sync=true",
        data=json.dumps({"max_epochs": 1, "val_split": 0.5, "device": "cpu"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert json.loads(body) == {}
    log = server["log"].read_text()
    assert "Epoch[1] Complete" in log and "Training Finished" in log, log[-4000:]
    # The best checkpoint of the run replaced the served weights and is a state dict of the network.
    assert model.stat().st_mtime_ns > before
    import torch

    state = torch.load(model, map_location="cpu", weights_only=True)
    assert any(k.startswith("encoder.") for k in state) and any(k.startswith("decode_head.") for k in state)
