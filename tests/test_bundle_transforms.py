"""The transform lists declared in the bundle's JSON, applied to real (synthetic) BraTS files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CONFIGS
from monai.bundle import ConfigParser

from refineformer3d.data import InputError


def _parser(tiny_brats, *overlays, **override):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), *(str(CONFIGS / o) for o in overlays)])
    parser.update({"dataset_dir": str(tiny_brats), "num_samples": 2, **override})
    return parser


@pytest.mark.parametrize(
    "overlays, channels, values",
    [((), 1, {0.0, 1.0, 2.0}), (("regions.json",), 3, {0.0, 1.0})],
    ids=["classes", "regions"],
)
def test_training_pipeline_yields_4_channel_crops_and_scheme_labels(tiny_brats, overlays, channels, values):
    parser = _parser(tiny_brats, *overlays)
    entry = parser.get_parsed_content("train_datalist")[0]
    assert len(entry["image"]) == 4 and entry["image"][0].endswith("_flair.nii.gz")
    samples = parser.get_parsed_content("train#preprocessing")(entry)
    assert len(samples) == 2
    for sample in samples:
        assert tuple(sample["image"].shape) == (4, 128, 128, 128)
        assert sample["image"].dtype == torch.float32
        assert tuple(sample["label"].shape) == (channels, 128, 128, 128)
        assert set(torch.unique(sample["label"]).tolist()) <= values
    # Crops are biased to tumour (2 positive : 1 negative): at least one of the two holds tumour voxels.
    assert any(bool((s["label"] > 0).any()) for s in samples)


def test_validation_pipeline_keeps_whole_normalised_brain(tiny_brats):
    parser = _parser(tiny_brats)
    entry = parser.get_parsed_content("val_datalist")[0]
    item = parser.get_parsed_content("validate#preprocessing")(entry)
    image, label = item["image"], item["label"]
    assert image.shape[0] == 4 and image.shape[1:] == label.shape[1:]
    brain = image[0] != 0
    # z-score on brain voxels, channel by channel; the background stays 0.
    for c in range(4):
        values = image[c][brain]
        assert abs(float(values.mean())) < 0.05 and abs(float(values.std()) - 1) < 0.05
    # RAS at 1 mm, whatever the file's own orientation.
    assert np.allclose(np.abs(np.diag(image.affine[:3, :3].numpy())), 1.0)
    assert torch.all(torch.diag(image.affine[:3, :3]) > 0)
    assert set(torch.unique(label).tolist()) <= {0.0, 1.0, 2.0}


def test_dataset_is_checked_on_start_unless_switched_off(tiny_brats, tmp_path):
    import shutil

    data = tmp_path / "brats"
    shutil.copytree(tiny_brats, data)
    flair = sorted(data.glob("Brats17TrainingData/*/*/*_flair.nii.gz"))[0]
    flair.write_bytes(flair.read_bytes()[:200])  # a truncated download
    with pytest.raises(InputError) as failure:  # a SystemExit: MONAI's parser does not wrap it in a traceback
        _parser(data).get_parsed_content("datalist")
    assert flair.name in str(failure.value) and "truncated" in str(failure.value)
    datalist = _parser(data, verify_dataset=False).get_parsed_content("datalist")
    assert len(datalist["training"]) > 0
