"""Skull stripping inside the pipeline (deepbet) on synthetic studies with a head: the transform, its modes, the
brain mask written beside the segmentation, and one study through ``refineformer3d-segment``."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from _studies import PLAIN, named
from monai.data import MetaTensor
from scipy import ndimage

from refineformer3d.data import SkullStripd, make_case
from refineformer3d.data.grids import skull_strip_warning
from refineformer3d.data.synthetic import add_head
from refineformer3d.data.synthetic.phantom import grid_scale

pytest.importorskip("deepbet")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def case():
    return make_case(seed=0, index=1, shape=(64, 64, 48))


@pytest.fixture(scope="module")
def head(case):
    return add_head(case)


def _study(case) -> MetaTensor:
    """A study as LoadStudyd gives it: the four modalities and the warning it records from the reference file."""
    image = MetaTensor(torch.from_numpy(case.images.astype(np.float32)), affine=torch.from_numpy(case.affine))
    image.meta["skull_strip_warning"] = skull_strip_warning(case.images[2], case.affine)
    return image


@pytest.fixture(scope="module")
def stripped_head(head):
    """The head study through SkullStripd's default mode."""
    return SkullStripd("image")({"image": _study(head), "case": "head"})


def test_synthetic_head_surrounds_the_same_brain_and_looks_unstripped(case, head):
    pad = (head.images.shape[1] - case.images.shape[1]) // 2
    assert pad > 0 and head.images.shape[1:] == tuple(s + 2 * pad for s in case.images.shape[1:])
    inner = (slice(None), *(slice(pad, -pad),) * 3)
    brain = case.images[2] > 0
    np.testing.assert_array_equal(head.images[inner][:, brain], case.images[:, brain])
    np.testing.assert_array_equal(head.label[inner[1:]], case.label)
    # The same world: the padded affine puts the brain where it was.
    np.testing.assert_allclose(head.affine @ [pad, pad, pad, 1], case.affine @ [0, 0, 0, 1])
    assert skull_strip_warning(case.images[2], case.affine) == ""
    assert "looks not skull-stripped" in skull_strip_warning(head.images[2], head.affine)
    # Scalp and marrow are bright on T1 outside a dark skull, as deepbet expects of a T1-weighted head.
    outside_mm = ndimage.distance_transform_edt(np.pad(brain, pad) == 0) / grid_scale(case.images.shape[1:])
    wm = np.median(case.images[1][(case.tissue == 3) & (case.label == 0)])
    skull, marrow = (head.images[1][(outside_mm > low) & (outside_mm < high)] for low, high in ((2.8, 4.2), (5, 7.5)))
    assert np.median(skull) < 0.1 * wm < wm < np.median(marrow)


def test_auto_strips_a_study_with_a_head_and_masks_every_modality(head, stripped_head, caplog):
    image, mask = stripped_head["image"], stripped_head["brain_mask"]
    assert mask.shape == (1, *head.images.shape[1:])
    truth = head.tissue > 0
    assert _dice(mask[0].numpy(), truth) > 0.9
    assert not image.numpy()[:, mask[0].numpy() == 0].any()
    inside = (mask[0].numpy() > 0) & truth
    np.testing.assert_array_equal(image.numpy()[:, inside], head.images[:, inside].astype(np.float32))
    assert image.meta["skull_strip"].startswith("deepbet ")
    assert image.meta["skull_strip_reason"].startswith("auto: the T1ce looks not skull-stripped")
    np.testing.assert_allclose(mask.affine.numpy(), image.affine.numpy())


def test_auto_leaves_a_stripped_study_and_its_mask_is_its_brain(case, monkeypatch):
    import refineformer3d.data.brain_extraction as brain_extraction

    def no_deepbet():
        raise AssertionError("deepbet was run on a study that is stripped already")

    monkeypatch.setattr(brain_extraction, "_extractor", no_deepbet)
    out = SkullStripd("image")({"image": _study(case)})
    np.testing.assert_array_equal(out["image"].numpy(), case.images.astype(np.float32))
    np.testing.assert_array_equal(out["brain_mask"][0].numpy(), case.images[2] > 0)
    assert out["image"].meta["skull_strip"] == "none"
    assert out["image"].meta["skull_strip_reason"] == "auto: looks skull-stripped"


def test_false_keeps_the_skull_and_warns(head, monkeypatch, caplog):
    import refineformer3d.data.brain_extraction as brain_extraction

    monkeypatch.setattr(brain_extraction, "_extractor", lambda: pytest.fail("deepbet ran with skull_strip false"))
    with caplog.at_level(logging.WARNING):
        out = SkullStripd("image", skull_strip="false")({"image": _study(head), "case": "head"})
    np.testing.assert_array_equal(out["image"].numpy(), head.images.astype(np.float32))
    assert out["image"].meta["skull_strip"] == "none"
    assert "study head: T1ce looks not skull-stripped" in caplog.text


def test_modes_are_checked():
    with pytest.raises(ValueError, match="skull_strip must be auto, true or false, got 'yes'"):
        SkullStripd("image", skull_strip="yes")
    assert SkullStripd("image", skull_strip="TRUE").skull_strip is True


@pytest.mark.slow  # deepbet twice: 2 min on a loaded 2-core machine
def test_true_strips_every_study_and_the_mask_does_not_depend_on_orientation(case, head):
    out = SkullStripd("image", skull_strip=True)({"image": _study(case)})
    assert out["image"].meta["skull_strip_reason"] == "skull_strip true"
    assert _dice(out["brain_mask"][0].numpy(), case.images[2] > 0) > 0.9
    # The head stored with its first two axes reversed (LPS voxels read as RAS): the same mask, reversed.
    from refineformer3d.data.brain_extraction import brain_mask

    flipped = np.diag([-1.0, -1.0, 1.0, 1.0])
    flipped[:2, 3] = np.asarray(head.images.shape[1:3]) - 1
    reversed_mask = brain_mask(head.images[2][::-1, ::-1], head.affine @ flipped)[::-1, ::-1]
    assert _dice(reversed_mask, brain_mask(head.images[2], head.affine)) > 0.97


@pytest.mark.slow  # two studies through the console script: 1 to 2.5 min on a loaded 2-core machine
def test_a_study_with_a_head_is_segmented_as_its_stripped_version(case, head, tmp_path, shipped_weights):
    from refineformer3d.segment import main

    stripped = named(tmp_path / "stripped", PLAIN, case.images, case.affine)
    raw = named(tmp_path / "raw", PLAIN, head.images, head.affine)
    common = ["--device", "cpu", "--report", "--model", str(shipped_weights)]
    assert main(["-i", str(stripped), "-o", str(tmp_path / "out_stripped"), *common]) == 0
    assert main(["-i", str(raw), "-o", str(tmp_path / "out_raw"), "--write_brain_mask", *common]) == 0
    out = tmp_path / "out_raw"
    assert sorted(p.name for p in out.iterdir()) == ["raw_brain_mask.nii.gz", "raw_report.json", "raw_seg.nii.gz"]
    report = json.loads((out / "raw_report.json").read_text())
    assert report["skull_strip"]["method"].startswith("deepbet ")
    assert report["warnings"] == [], "stripped, so no longer a study that looks not skull-stripped"
    seg_file, mask_file = nib.load(out / "raw_seg.nii.gz"), nib.load(out / "raw_brain_mask.nii.gz")
    for written in (seg_file, mask_file):  # both on the study's own grid
        assert written.shape == head.images.shape[1:]
        np.testing.assert_allclose(written.affine, head.affine, atol=1e-4)
    seg, mask = np.asarray(seg_file.dataobj) > 0, np.asarray(mask_file.dataobj) > 0
    assert _dice(mask, head.tissue > 0) > 0.9
    assert not (seg & ~mask).any(), "no tumour outside the brain"
    reference_report = json.loads((tmp_path / "out_stripped" / "stripped_report.json").read_text())
    assert reference_report["skull_strip"] == {"method": "none", "reason": "auto: looks skull-stripped"}
    pad = (head.images.shape[1] - case.images.shape[1]) // 2
    reference = np.asarray(nib.load(tmp_path / "out_stripped" / "stripped_seg.nii.gz").dataobj) > 0
    # As well as its stripped version, against the phantom's tumour (the shipped weights find small grids hard:
    # whole-tumour Dice 0.35 and 0.33 here)
    truth = case.label > 0
    assert _dice(seg[(slice(pad, -pad),) * 3], truth) >= 0.8 * _dice(reference, truth)
    wt, wt_reference = (r["region_volumes_ml"]["whole tumour"] for r in (report, reference_report))
    assert abs(wt - wt_reference) <= 0.25 * wt_reference
