"""The slice-wise SegFormer overlay (``bundle/configs/segformer2d.json``) on top of train.json and inference.json."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import CONFIGS, bundle_workflow

transformers = pytest.importorskip("transformers")

TRAIN = str(CONFIGS / "train.json")
EVALUATE = str(CONFIGS / "evaluate.json")
INFERENCE = str(CONFIGS / "inference.json")
SEGFORMER2D = str(CONFIGS / "segformer2d.json")

# a CPU-sized run: B0 on crops of 8 slices of 64 x 64, the whole in-plane extent of the tiny studies
FAST = {"roi_size": [64, 64, 8], "num_samples": 1, "num_workers": 0, "warmup_epochs": 1, "device": "cpu"}


def _workflow(config_file, bundle_root, dataset_dir, workflow_type="train", **override):
    return bundle_workflow(config_file, bundle_root, dataset_dir, workflow_type, **{**FAST, **override})


def test_overlay_only_changes_network_and_window():
    overlay = json.loads(open(SEGFORMER2D).read())
    train, inference = (json.loads(open(f).read()) for f in (TRAIN, INFERENCE))
    # keys that exist in both base configs, or new ones the overlay's network reads
    for key in overlay:
        assert key == "pretrained" or (key in train and key in inference), key
    assert overlay["network_def"]["name"] == "segformer2d_b0" and overlay["pretrained"] == "none"
    roi = overlay["roi_size"]
    assert roi[2] < roi[0] and overlay["sw_overlap"][2] == 0.0  # thin in the axial direction, each slice once


@pytest.fixture(scope="module")
def mit_b0_folder(tmp_path_factory):
    """A MiT-B0-sized encoder (random, RGB) written with ``save_pretrained``: what ``--pretrained DIR`` reads."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("mit-b0")
    transformers.SegformerModel(transformers.SegformerConfig(num_channels=3)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained_2d(tmp_path_factory, tiny_brats, mit_b0_folder):
    """One epoch of slice-wise training through the overlay, starting from the saved encoder."""
    root = tmp_path_factory.mktemp("bundle2d")
    wf = _workflow([TRAIN, SEGFORMER2D], root, tiny_brats, epochs=1, pretrained=str(mit_b0_folder))
    assert wf.check_properties() == []
    network = wf.parser.get_parsed_content("network")
    saved = transformers.SegformerModel.from_pretrained(mit_b0_folder).state_dict()
    key = "stages.1.blocks.0.attention.q_proj.weight"
    torch.testing.assert_close(network.model.segformer.state_dict()[key], saved[key])
    crops = []  # what the network sees, in training and in the validation's sliding window
    network.register_forward_pre_hook(lambda module, args: crops.append(tuple(args[0].shape)))
    wf.run()
    metrics = dict(wf.parser.get_parsed_content("validate#evaluator").state.metrics)
    wf.finalize()
    return root, metrics, crops


def test_one_epoch_of_slice_wise_training(trained_2d):
    root, metrics, crops = trained_2d
    assert crops and all(shape[1:] == (4, 64, 64, 8) for shape in crops)
    assert math.isfinite(metrics["val_mean_dice"]) and "val_dice_wt" in metrics
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    from refineformer3d.networks import create_model

    create_model("segformer2d_b0", in_channels=4, out_channels=3).load_state_dict(state)


def test_slice_wise_crops_are_tumour_biased(tmp_path, tiny_brats):
    # crops smaller than the brain (the smallest slices MiT-B0 takes are 29 x 29), so that some could miss the tumour
    wf = _workflow([TRAIN, SEGFORMER2D], tmp_path, tiny_brats, num_samples=6, cache_rate=0.0, roi_size=[32, 32, 4])
    dataset = wf.parser.get_parsed_content("train#dataset")
    crops = [crop for i in range(3) for crop in dataset[i]]
    with_tumour = [bool((c["label"] > 0).any()) for c in crops]
    # RandCropByPosNegLabeld centres two of three crops on tumour voxels
    assert sum(with_tumour) >= len(crops) // 2
    assert all(tuple(c["image"].shape) == (4, 32, 32, 4) for c in crops)


def test_evaluate_and_inference_on_the_input_grid(trained_2d, tiny_brats, tmp_path):
    root, _, _ = trained_2d
    wf = _workflow([TRAIN, EVALUATE, SEGFORMER2D], root, tiny_brats)
    wf.run()
    wf.finalize()
    assert (root / "eval" / "val_mean_dice_raw.csv").exists()

    studies = tiny_brats / "Brats17ValidationData"
    out = tmp_path / "segmentations"
    wf = _workflow([INFERENCE, SEGFORMER2D], root, studies, workflow_type="infer", output_dir=str(out))
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    cases = sorted(p for p in studies.iterdir() if p.is_dir())
    assert cases
    for case in cases:
        seg = nib.load(out / f"{case.name}_seg.nii.gz")
        ref = nib.load(case / f"{case.name}_flair.nii.gz")
        assert seg.shape == ref.shape
        np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-4)
        assert set(np.unique(np.asanyarray(seg.dataobj))) <= {0, 1, 2}
