"""Per-study PNG and JSON reports of inference: the helpers on hand-made arrays, the handler in the bundle."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from matplotlib.image import imread
from monai.bundle import ConfigWorkflow
from monai.data import MetaTensor
from monai.transforms import Invertd
from test_bundle import FAST, INFERENCE, LOGGING, META, _lps_2mm_studies

from refineformer3d.networks import create_model
from refineformer3d.reports import (
    StudyReportSaver,
    _view,
    intensity_window,
    label_names,
    label_volumes,
    region_labels,
    tumour_slices,
    voxel_volume_ml,
)

PNG_SHAPE = (660, 900)  # 9 x 6.6 inches at 100 dpi


def _rotation_z(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize(
    "linear, expected_ml",
    [
        (np.eye(3), 0.001),
        (np.diag([-1.0, -1.0, 2.0]), 0.002),  # LPS, 2 mm slices
        (_rotation_z(30) @ np.diag([0.5, 1.0, 3.0]), 0.0015),  # oblique
    ],
)
def test_voxel_volume_from_affine(linear, expected_ml):
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = [12.0, -7.0, 3.0]  # the origin does not matter
    assert voxel_volume_ml(affine) == pytest.approx(expected_ml)
    assert voxel_volume_ml(torch.as_tensor(affine)) == pytest.approx(expected_ml)


def test_label_volumes_count_each_value():
    label = np.zeros((4, 5, 6), dtype=np.uint8)
    label[0, :2, :3] = 1  # 6 voxels
    label[3, 4, :] = 4  # 6 voxels
    label[1, 1, 1] = 2
    assert label_volumes(label, [1, 2, 4], 0.5) == {1: 3.0, 2: 0.5, 4: 3.0}
    assert label_volumes(np.zeros((2, 2, 2)), [1, 2], 0.5) == {1: 0.0, 2: 0.0}


def test_label_names_and_regions_follow_the_scheme():
    assert label_names("classes") == {1: "tumour core", 2: "edema"}
    assert region_labels("classes") == {"tumour core": (1,), "whole tumour": (1, 2)}
    assert label_names("regions") == {1: "necrosis / non-enhancing tumour", 2: "edema", 4: "enhancing tumour"}
    assert region_labels("regions") == {"tumour core": (1, 4), "whole tumour": (1, 2, 4), "enhancing tumour": (4,)}
    assert region_labels("regions", "brats2023")["enhancing tumour"] == (3,)
    with pytest.raises(ValueError, match="unknown label scheme"):
        label_names("labels")


def test_tumour_slices_pick_the_largest_cross_section():
    label = np.zeros((10, 12, 14), dtype=np.uint8)
    label[2:5, 3:9, 6] = 1  # 18 voxels in z = 6
    label[3, 4:6, 9:11] = 2  # 4 voxels, in z = 9 and 10
    label[8, 0, 0] = 1
    # x: slice 3 has 6 + 4 voxels; y: 4 and 5 have 3 + 2 each (ties: the lower); z: slice 6.
    assert tumour_slices(label) == (3, 4, 6)


def test_tumour_slices_centre_when_nothing_is_segmented():
    assert tumour_slices(np.zeros((10, 7, 4))) == (5, 3, 2)


def test_intensity_window_ignores_the_background():
    image = np.zeros((10, 10, 10))
    image[:5, :4, :5] = np.linspace(-2.0, 3.0, 100).reshape(5, 4, 5)
    low, high = intensity_window(image, (0.0, 100.0))
    assert (low, high) == (-2.0, 3.0)
    assert intensity_window(np.zeros((3, 3, 3))) == (0.0, 1.0)


def test_views_are_radiological():
    # RAS volume: one bright voxel at the patient's right (high x), anterior (high y) and superior (high z) corner.
    volume = np.zeros((8, 9, 10))
    volume[6, 7, 8] = 1.0
    axial, coronal, sagittal = _view(volume, 2, 8), _view(volume, 1, 7), _view(volume, 0, 6)
    assert axial.shape == (9, 8) and coronal.shape == (10, 8) and sagittal.shape == (10, 9)
    # origin="lower": row 0 is drawn at the bottom. Right on the image's left; anterior on the left in sagittal.
    assert np.argwhere(axial).tolist() == [[7, 1]]  # anterior (top), right (left)
    assert np.argwhere(coronal).tolist() == [[8, 1]]  # superior (top), right (left)
    assert np.argwhere(sagittal).tolist() == [[8, 1]]  # superior (top), anterior (left)
    overlay = np.zeros((8, 9, 10, 4))
    overlay[6, 7, 8] = 1.0
    assert np.array_equal(_view(overlay, 2, 8)[..., 0], axial)


def test_bad_arguments():
    with pytest.raises(ValueError, match="nothing to write"):
        StudyReportSaver("out", transform=None, write_png=False, write_report=False)
    with pytest.raises(TypeError, match="True or False"):
        StudyReportSaver("out", transform=None, write_png="false")
    with pytest.raises(ValueError, match="png_channels"):
        StudyReportSaver("out", transform=None, png_channels=("FLAIR", "DWI"))
    with pytest.raises(ValueError, match="unknown label scheme"):
        StudyReportSaver("out", transform=None, write_png=False, label_scheme="labels")


def test_regions_report_sums_brats_labels(tmp_path):
    values = np.zeros((1, 4, 5, 6), dtype=np.float32)
    values[0, 0, :2] = 1  # necrosis: 12 voxels
    values[0, 1] = 2  # edema: 30
    values[0, 2, 0, 0] = 4  # enhancing: 1
    pred = MetaTensor(
        torch.as_tensor(values),
        affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])),
        meta={"filename_or_obj": "/data/BRATS_007.nii.gz"},
    )
    saver = StudyReportSaver(tmp_path, transform=None, write_png=False, label_scheme="regions", model_version="9.9")
    saver.save(image=None, pred=pred, runtime_s=1.5, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BRATS_007_report.json"]
    report = json.loads((tmp_path / "BRATS_007_report.json").read_text())
    assert report["voxel_volume_ml"] == pytest.approx(0.008)
    assert report["class_volumes_ml"] == pytest.approx(
        {"necrosis / non-enhancing tumour": 0.096, "edema": 0.24, "enhancing tumour": 0.008}
    )
    assert report["region_volumes_ml"] == pytest.approx(
        {"tumour core": 0.104, "whole tumour": 0.344, "enhancing tumour": 0.008}
    )
    assert report["input_files"] == ["/data/BRATS_007.nii.gz"] and report["png"] is None
    assert report["model_version"] == "9.9" and "not for clinical use" in report["intended_use"]


# The bundle: a randomly initialised tiny network is enough, the reports need a segmentation, not a good one.


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    (root / "models").mkdir()
    torch.manual_seed(0)
    torch.save(
        create_model("refineformer3d_tiny", in_channels=4, out_channels=3).state_dict(), root / "models" / "model.pt"
    )
    return root


@pytest.fixture(scope="module")
def studies(tiny_brats, tmp_path_factory) -> Path:
    """A study stored LPS with 1 x 1 x 2 mm voxels and one as generated (LPS, 1 mm), in one BraTS folder."""
    out = tmp_path_factory.mktemp("studies")
    folder = _lps_2mm_studies(tiny_brats, out)[0].parent.parent
    generated = sorted(p for p in (tiny_brats / "Brats17ValidationData").iterdir() if p.is_dir())[1]
    shutil.copytree(generated, folder / generated.name)
    return folder


def _workflow(root, data, output_dir, meta_file=None, **override):
    # No meta_file by default: as `python -m monai.bundle run --config_file ...`, which reads configs/metadata.json.
    wf = ConfigWorkflow(
        config_file=INFERENCE, meta_file=meta_file, logging_file=LOGGING, workflow_type="infer",
        bundle_root=str(root), dataset_dir=str(data), output_dir=str(output_dir), **{**FAST, **override},
    )  # fmt: skip
    wf.initialize()
    return wf


@pytest.fixture(scope="module")
def reported(bundle_root, studies, tmp_path_factory):
    """Inference with both files on; returns the output folder, the handlers and each study's engine output.

    Without N4: it divides each sequence by a smooth field of its own, and only without it is the restored image a
    linear function of the input voxel by voxel, the check that the inversion put every voxel back where it was.
    """
    out = tmp_path_factory.mktemp("out")
    wf = _workflow(bundle_root, studies, out, write_png=True, write_report=True, bias_correction=False)
    handlers = wf.parser.get_parsed_content("handlers")
    evaluator = wf.parser.get_parsed_content("evaluator")
    outputs = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: outputs.extend(engine.state.output))
    wf.run()
    preprocessing = wf.parser.get_parsed_content("preprocessing")
    wf.finalize()
    return out, handlers, evaluator, outputs, preprocessing


def test_handler_is_the_last_one_and_attached(reported):
    _, handlers, evaluator, _, _ = reported
    # StudyBatch comes first: its failure path must run before StatsHandler re-raises (see refineformer3d.handlers)
    assert [type(h).__name__ for h in handlers] == ["StudyBatch", "StatsHandler", "StudyReportSaver"]
    assert evaluator.has_event_handler(handlers[-1], Events.ITERATION_COMPLETED)


def test_files_lie_beside_the_segmentations(reported, studies):
    out = reported[0]
    cases = sorted(p.name for p in studies.iterdir())
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{case}{suffix}" for case in cases for suffix in ("_seg.nii.gz", "_seg.png", "_report.json")
    )


def test_report_volumes_are_the_written_segmentation(reported, studies):
    out, _, evaluator, _, _ = reported
    version = json.loads(Path(META).read_text())["version"]
    segmented = 0.0
    for case in sorted(p.name for p in studies.iterdir()):
        report = json.loads((out / f"{case}_report.json").read_text())
        seg = nib.load(out / f"{case}_seg.nii.gz")
        data = np.asanyarray(seg.dataobj)
        voxel_ml = float(np.prod(seg.header.get_zooms()[:3])) / 1000
        assert report["voxel_volume_ml"] == pytest.approx(voxel_ml)
        values = {name: int(v) for v, name in report["labels"].items()}
        assert report["class_volumes_ml"] == pytest.approx(
            {name: np.count_nonzero(data == v) * voxel_ml for name, v in values.items()}
        )
        classes = report["class_volumes_ml"]
        assert report["region_volumes_ml"] == pytest.approx(
            {"tumour core": classes["tumour core"], "whole tumour": classes["tumour core"] + classes["edema"]}
        )
        segmented += report["region_volumes_ml"]["whole tumour"]
        assert report["study"] == case and report["label_scheme"] == "classes"
        assert report["segmentation"] == str(out / f"{case}_seg.nii.gz")
        assert report["png"] == str(out / f"{case}_seg.png")
        # all four inputs, and the grid the segmentation was written on
        assert report["input_files"] == {
            m: str(studies / case / f"{case}_{m}.nii.gz") for m in ("flair", "t1", "t1ce", "t2")
        }
        assert report["reference_modality"] == "t1ce"
        assert report["reference_grid"]["shape"] == list(seg.shape)
        np.testing.assert_allclose(report["reference_grid"]["affine_ras"], seg.affine, atol=1e-4)
        # one study's time, within the whole inference run that Ignite timed
        assert 0 < report["runtime_s"] < evaluator.state.times["COMPLETED"] and report["runtime_covers"]
        assert report["device"] == "cpu" and report["model_version"] == version
        assert "not for clinical use" in report["intended_use"]
    assert segmented > 0, "the random network segments something, so the volumes are checked on non-zero counts"
    voxel_volumes = sorted(json.loads(p.read_text())["voxel_volume_ml"] for p in out.glob("*_report.json"))
    assert voxel_volumes == pytest.approx([0.001, 0.002])


def test_png_opens_with_its_size_and_shows_the_image(reported):
    pngs = sorted(reported[0].glob("*_seg.png"))
    assert len(pngs) == 2
    for png in pngs:
        pixels = imread(png)
        assert pixels.shape[:2] == PNG_SHAPE
        grey = pixels[..., :3].mean(-1)
        assert len(np.unique(np.round(grey, 2))) > 50, f"{png.name} looks blank"
        panels = pixels[: int(0.9 * PNG_SHAPE[0]), :, :3]  # above the legend, whose patches are coloured anyway
        assert (np.abs(panels[..., 0] - panels[..., 1]) > 0.2).any(), f"{png.name} shows no segmentation"


def test_image_is_invertible_after_postprocessing(reported):
    """Postprocessing's Invertd of the prediction left the image's applied operations for the handler to invert."""
    _, _, _, outputs, preprocessing = reported
    assert len(outputs) == 2
    invert = Invertd("image", transform=preprocessing, orig_keys="image", nearest_interp=False)
    for output in outputs:
        image, pred = output["image"], output["pred"]
        assert [op["class"] for op in image.applied_operations] == ["Orientation", "SpatialResample", "CropForeground"]
        restored = invert({"image": image})["image"]
        source = nib.load(image.meta["filename_or_obj"])
        assert restored.shape[1:] == pred.shape[1:] == source.shape
        np.testing.assert_allclose(restored.affine, source.affine, atol=1e-4)
        np.testing.assert_allclose(pred.affine, source.affine, atol=1e-4)  # the handler's RAS view left it as written
        # The restored FLAIR is the z-scored input on the input's own grid: linearly related voxel by voxel.
        raw = np.asanyarray(source.dataobj).astype(np.float64)
        brain = raw > 0
        assert np.corrcoef(restored[0].numpy()[brain], raw[brain])[0, 1] > 0.99


def test_both_flags_off_leaves_the_handler_out(bundle_root, studies, tmp_path):
    wf = _workflow(bundle_root, studies, tmp_path)
    assert [type(h).__name__ for h in wf.parser.get_parsed_content("handlers")] == ["StudyBatch", "StatsHandler"]
    wf.run()
    wf.finalize()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{p.name}_seg.nii.gz" for p in studies.iterdir())


@pytest.mark.parametrize("write_png, write_report", [(True, False), (False, True)])
def test_either_flag_attaches_the_handler(bundle_root, studies, tmp_path, write_png, write_report):
    wf = _workflow(bundle_root, studies, tmp_path, write_png=write_png, write_report=write_report)
    saver = wf.parser.get_parsed_content("handlers")[-1]
    assert isinstance(saver, StudyReportSaver)
    assert (saver.write_png, saver.write_report) == (write_png, write_report)


def test_missing_metadata_leaves_the_version_empty(bundle_root, studies, tmp_path):
    wf = _workflow(bundle_root, studies, tmp_path, meta_file=str(tmp_path / "metadata.json"), write_report=True)
    assert wf.parser.get_parsed_content("handlers")[-1].model_version is None
