"""The two label schemes and prediction-to-label conversion, on hand-made label maps."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.losses import DiceCELoss, DiceLoss
from monai.transforms import (
    Compose,
    ConvertToMultiChannelBasedOnBratsClasses,
    EnsureChannelFirstd,
    LoadImaged,
    SaveImaged,
)

from refineformer3d.data import BratsLabelsFromPredictiond, ConvertBratsLabelsd

# One voxel of each part, per convention: background, necrosis/non-enhancing, edema, enhancing.
RAW = {"brats": [0, 1, 2, 4], "brats2023": [0, 1, 2, 3], "msd": [0, 2, 1, 3]}
CLASSES = [0, 1, 2, 1]  # background, core, edema, core
REGIONS = [
    [0, 1, 0, 1],  # TC: necrosis + enhancing
    [0, 1, 1, 1],  # WT: everything
    [0, 0, 0, 1],
]  # ET: enhancing


def label_map(convention: str, dtype=np.uint8) -> np.ndarray:
    """(1, 2, 2, 4): the four parts along the last axis, repeated."""
    return np.broadcast_to(np.array(RAW[convention], dtype=dtype), (1, 2, 2, 4)).copy()


def meta_label(values: np.ndarray, filename: str = "case_seg.nii.gz") -> MetaTensor:
    affine = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    return MetaTensor(torch.as_tensor(values, dtype=torch.float32), affine=affine, meta={"filename_or_obj": filename})


@pytest.mark.parametrize("convention", sorted(RAW))
def test_classes(convention):
    out = ConvertBratsLabelsd("label", convention=convention)({"label": label_map(convention)})["label"]
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (1, 2, 2, 4)
    np.testing.assert_array_equal(out[0, 0, 0], CLASSES)


@pytest.mark.parametrize("convention", sorted(RAW))
def test_regions(convention):
    label = meta_label(label_map(convention))
    out = ConvertBratsLabelsd("label", scheme="regions", convention=convention)({"label": label})["label"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and out.shape == (3, 2, 2, 4)
    np.testing.assert_array_equal(out[:, 0, 0].numpy(), REGIONS)
    assert out.meta["filename_or_obj"] == "case_seg.nii.gz"
    torch.testing.assert_close(out.affine, label.affine)


def test_regions_agree_with_monai_for_brats_labels():
    rng = np.random.default_rng(0)
    label = rng.choice([0, 1, 2, 4], size=(1, 6, 6, 6)).astype(np.float32)
    ours = ConvertBratsLabelsd("label", scheme="regions")({"label": label})["label"]
    np.testing.assert_array_equal(ours, ConvertToMultiChannelBasedOnBratsClasses()(label).astype(np.float32))


def test_classes_keep_meta_and_dtype():
    label = meta_label(label_map("brats"))
    out = ConvertBratsLabelsd("label")({"label": label})["label"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    assert out.meta["filename_or_obj"] == "case_seg.nii.gz"
    np.testing.assert_array_equal(out[0, 0, 0].numpy(), CLASSES)


@pytest.mark.parametrize(("convention", "bad"), [("brats", 3), ("brats2023", 4), ("msd", 4), ("brats", 1.5)])
def test_values_outside_the_convention(convention, bad):
    label = meta_label(np.array([[[[0, 1, bad]]]]), filename="/data/Brats17_X_1_seg.nii.gz")
    with pytest.raises(ValueError, match=rf"label 'label' \(/data/Brats17_X_1_seg.nii.gz\): values \[{bad}"):
        ConvertBratsLabelsd("label", convention=convention)({"label": label})


def test_file_named_from_a_meta_dict():
    data = {"label": np.array([[[7]]]), "label_meta_dict": {"filename_or_obj": "x_seg.nii.gz"}}
    with pytest.raises(ValueError, match=r"x_seg.nii.gz\): values \[7\]"):
        ConvertBratsLabelsd("label")(data)


def test_bad_arguments_and_shapes():
    with pytest.raises(ValueError, match="unknown label scheme 'onehot'"):
        ConvertBratsLabelsd("label", scheme="onehot")
    with pytest.raises(ValueError, match="unknown label convention 'brats2019'"):
        ConvertBratsLabelsd("label", convention="brats2019")
    with pytest.raises(ValueError, match="unknown label scheme"):
        BratsLabelsFromPredictiond("pred", scheme="softmax")
    with pytest.raises(ValueError, match="one channel first"):
        ConvertBratsLabelsd("label")({"label": np.zeros((2, 4, 4, 4), dtype=np.uint8)})
    with pytest.raises(ValueError, match="expected 3 channels"):
        BratsLabelsFromPredictiond("pred")({"pred": torch.zeros(2, 4, 4, 4)})
    assert ConvertBratsLabelsd("label", allow_missing_keys=True)({"image": 1}) == {"image": 1}


def test_losses_accept_the_outputs():
    logits = torch.randn(1, 3, 2, 2, 4)
    classes = ConvertBratsLabelsd("label")({"label": meta_label(label_map("brats"))})["label"]
    loss = DiceCELoss(to_onehot_y=True, softmax=True)(logits, classes[None])
    regions = ConvertBratsLabelsd("label", scheme="regions")({"label": meta_label(label_map("brats"))})["label"]
    assert torch.isfinite(loss) and torch.isfinite(DiceLoss(sigmoid=True)(logits, regions[None]))


def test_prediction_classes_argmax():
    pred = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.1, 0.2, 0.7]]).T.reshape(3, 1, 1, 3)
    out = BratsLabelsFromPredictiond("pred")({"pred": MetaTensor(pred, meta={"filename_or_obj": "p.nii.gz"})})["pred"]
    assert out.shape == (1, 1, 1, 3) and out.flatten().tolist() == [0, 1, 2]
    assert out.meta["filename_or_obj"] == "p.nii.gz"


def test_prediction_regions_nested_by_union():
    # Voxels: nothing, WT only, TC+WT, ET+TC+WT, ET alone (counted as enhancing), TC alone (necrosis).
    tc = [0.1, 0.1, 0.9, 0.9, 0.1, 0.9]
    wt = [0.1, 0.9, 0.9, 0.9, 0.1, 0.1]
    et = [0.1, 0.1, 0.1, 0.9, 0.9, 0.1]
    pred = torch.tensor([tc, wt, et]).reshape(3, 1, 1, 6)
    out = BratsLabelsFromPredictiond("pred", scheme="regions")({"pred": pred})["pred"]
    assert out.shape == (1, 1, 1, 6) and out.flatten().tolist() == [0, 2, 1, 4, 4, 1]
    out = BratsLabelsFromPredictiond("pred", scheme="regions", convention="brats2023", threshold=0.95)({"pred": pred})
    assert out["pred"].flatten().tolist() == [0] * 6
    out = BratsLabelsFromPredictiond("pred", scheme="regions", convention="brats2023")({"pred": pred.numpy()})
    assert isinstance(out["pred"], np.ndarray) and out["pred"].flatten().tolist() == [0, 2, 1, 3, 3, 1]


@pytest.mark.parametrize("convention", sorted(RAW))
def test_regions_round_trip(convention):
    rng = np.random.default_rng(1)
    label = rng.choice(RAW[convention], size=(1, 5, 5, 5)).astype(np.float32)
    regions = ConvertBratsLabelsd("label", scheme="regions", convention=convention)({"label": label})["label"]
    back = BratsLabelsFromPredictiond("pred", scheme="regions", convention=convention)({"pred": regions})["pred"]
    np.testing.assert_array_equal(back, label)


def test_prediction_can_be_saved_with_the_image_geometry(tmp_path):
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), dtype=np.int16), affine), tmp_path / "study_flair.nii.gz")
    image = Compose([LoadImaged("image"), EnsureChannelFirstd("image")])({"image": tmp_path / "study_flair.nii.gz"})
    pred = image["image"].repeat(3, 1, 1, 1) * 0.0
    pred[1] = 1.0  # whole tumour everywhere
    out = BratsLabelsFromPredictiond("pred", scheme="regions")({"pred": pred})
    SaveImaged("pred", output_dir=tmp_path / "out", output_postfix="seg", separate_folder=False, output_dtype=np.uint8)(
        out
    )
    saved = nib.load(tmp_path / "out" / "study_flair_seg.nii.gz")
    np.testing.assert_array_equal(saved.affine, affine)
    assert np.unique(np.asanyarray(saved.dataobj)).tolist() == [2]


def test_path_safe_spacingd_is_spacingd_with_monai_label_keys(tmp_path):
    """MONAI Label adds image_path (a string) to the data; Spacingd's result, metadata and inverse stay MONAI's."""
    from monai.transforms import Spacingd

    from refineformer3d.data import PathSafeSpacingd

    affine = np.diag([2.0, 1.0, 1.5, 1.0])
    path = tmp_path / "study.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 10, 6, 4)).astype(np.float32), affine), path)
    load = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])
    safe = PathSafeSpacingd("image", pixdim=(1.0, 1.0, 1.0))
    reference = Spacingd("image", pixdim=(1.0, 1.0, 1.0))(load({"image": str(path)}))["image"]

    out = safe({**load({"image": str(path)}), "image_path": str(path)})
    assert out["image_path"] == str(path)
    assert out["image"].shape == reference.shape == (4, 15, 10, 8)
    torch.testing.assert_close(out["image"].affine, reference.affine)
    torch.testing.assert_close(out["image"].as_tensor(), reference.as_tensor())
    restored = safe.inverse(out)
    assert restored["image"].shape == (4, 8, 10, 6) and restored["image_path"] == str(path)


def _thick(image, **kwargs):
    from refineformer3d.data import RandThickSlicesd

    transform = RandThickSlicesd("image", prob=1.0, **kwargs)
    transform.set_random_state(0)
    return transform({"image": image})["image"]


def test_thick_slices_blur_one_axis_and_keep_the_others_and_the_background():
    # a checkerboard along x only: slabs of 2 voxels average it away along x
    x = torch.arange(8.0).reshape(8, 1, 1).expand(8, 6, 4) % 2 + 1.0
    y = torch.arange(6.0).reshape(1, 6, 1).expand(8, 6, 4) + 1.0
    image = MetaTensor(torch.stack([x, y]), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    image[:, :, :, 0] = 0  # background: zero in every channel
    out = _thick(image, thickness=(2, 2), axes=(0,))
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, image.affine) and out.shape == image.shape
    assert torch.allclose(out[0, :, :, 1:], torch.full_like(out[0, :, :, 1:], 1.5))  # the slab means
    assert torch.allclose(out[1], image[1])  # constant along x: linear interpolation keeps it exactly
    assert torch.count_nonzero(out[:, :, :, 0]) == 0
    # along y a linear ramp between slice centres stays a ramp inside; thickness 1 changes nothing
    ramp = _thick(torch.stack([y, y]), thickness=(3, 3), axes=(1,))
    assert torch.allclose(ramp[0, :, 1:5], y[:, 1:5]) and not torch.allclose(ramp[0], y)
    assert torch.equal(_thick(image, thickness=(1, 1)), image)


def test_thick_slices_draw_axis_and_thickness_per_call_and_check_arguments():
    from refineformer3d.data import RandThickSlicesd

    transform = RandThickSlicesd("image", prob=1.0, thickness=(2, 5))
    transform.set_random_state(3)
    drawn = set()
    for _ in range(40):
        transform.randomize()
        drawn.add((transform._axis, transform._slice))
    assert {a for a, _ in drawn} == {0, 1, 2} and {t for _, t in drawn} == {2, 3, 4, 5}
    for bad in ((0, 2), (3, 2)):
        with pytest.raises(ValueError, match="thickness"):
            RandThickSlicesd("image", thickness=bad)
    with pytest.raises(ValueError, match="axes"):
        RandThickSlicesd("image", axes=())
    with pytest.raises(ValueError, match=r"\(C, X, Y, Z\)"):
        _thick(torch.ones(4, 4, 4))


def test_drop_sequence_blanks_whole_sequences_inside_the_brain_and_keeps_the_rest():
    from refineformer3d.data import RandDropSequenced

    image = MetaTensor(torch.randn(4, 6, 5, 4) + 3.0, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    image[:, 0] = 0  # background: zero in every channel
    transform = RandDropSequenced(["image", "other"], prob=1.0, num_sequences=(1, 2), value=-1.0)
    transform.set_random_state(0)
    counts, dropped_any = set(), set()
    for _ in range(30):
        out = transform({"image": image, "other": image.clone()})
        dropped = [c for c in range(4) if not torch.equal(out["image"][c], image[c])]
        assert isinstance(out["image"], MetaTensor) and torch.equal(out["image"].affine, image.affine)
        assert torch.equal(out["image"], out["other"])  # one draw for every key
        for c in range(4):
            if c in dropped:
                assert torch.all(out["image"][c, 1:] == -1.0) and torch.count_nonzero(out["image"][c, 0]) == 0
            else:
                assert torch.equal(out["image"][c], image[c])
        counts.add(len(dropped))
        dropped_any.update(dropped)
    assert counts == {1, 2} and dropped_any == {0, 1, 2, 3}
    assert image[1:].min() != -1.0  # the input itself is untouched
    numpy_out = RandDropSequenced("image", prob=1.0)({"image": image.numpy()})["image"]
    assert isinstance(numpy_out, np.ndarray) and (np.all(numpy_out == 0, axis=(1, 2, 3))).sum() == 1
    assert torch.equal(RandDropSequenced("image", prob=0.0)({"image": image})["image"], image)


def test_drop_sequence_checks_its_arguments_and_names_the_file():
    from refineformer3d.data import RandDropSequenced

    for bad in ((0, 1), (2, 1)):
        with pytest.raises(ValueError, match="num_sequences"):
            RandDropSequenced("image", num_sequences=bad)
    image = MetaTensor(torch.ones(2, 3, 3, 3), meta={"filename_or_obj": "case_0001.nii.gz"})
    with pytest.raises(ValueError, match=r"'image' \(case_0001.nii.gz\) has 2 channels"):
        RandDropSequenced("image", num_sequences=(1, 2))({"image": image})
    with pytest.raises(ValueError, match="'other' has 3 channels"):
        RandDropSequenced(["image", "other"])({"image": torch.ones(4, 2, 2, 2), "other": torch.ones(3, 2, 2, 2)})


def _biased_brain(size: int = 40) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A skull-stripped ball of white matter (100) holding a brighter lesion (180), under a smooth multiplicative
    field of about +-35 %: the image, the brain mask and the lesion mask."""
    axis = torch.linspace(-1, 1, size)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    brain = x**2 + y**2 + z**2 < 0.8
    lesion = (x - 0.2) ** 2 + y**2 + (z + 0.1) ** 2 < 0.06
    tissue = torch.where(lesion, 180.0, 100.0) * brain
    field = torch.exp(0.3 * x - 0.2 * y**2 + 0.15 * y * z)
    return tissue * field, brain, lesion


@pytest.mark.parametrize("interpolate_field", [False, True])
def test_bias_field_correction_divides_out_a_smooth_field_inside_the_brain(interpolate_field):
    from refineformer3d.data import BiasFieldCorrectiond

    biased, brain, lesion = _biased_brain()
    blank = torch.zeros_like(biased)
    image = MetaTensor(torch.stack([biased, 2 * biased, blank]), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    n4 = BiasFieldCorrectiond("image", shrink_factor=2, interpolate_field=interpolate_field)
    out = n4({"image": image, "label": "kept"})
    corrected = out["image"]
    assert isinstance(corrected, MetaTensor) and corrected.dtype == torch.float32 and corrected.shape == image.shape
    assert torch.equal(corrected.affine, image.affine) and out["label"] == "kept"
    white = brain & ~lesion

    def spread(values):
        return float(values.std() / values.mean())

    for c in range(2):
        # the field is most of white matter's spread before, little of it after
        assert spread(corrected[c][white]) < 0.4 * spread(image[c][white])
        # tissue contrast survives: the lesion stays 1.8 times as bright as white matter
        ratio = float(corrected[c][lesion].mean() / corrected[c][white].mean())
        assert ratio == pytest.approx(1.8, rel=0.1)
        assert (corrected[c][~brain] == 0).all()
    assert torch.equal(corrected[2], blank), "a blank sequence has nothing to fit and stays as it is"


def test_bias_field_interpolated_from_the_fit_grid_is_the_field_evaluated_on_every_voxel():
    """inference.json's cheap N4: the same fit, its field evaluated on the shrunk grid and interpolated linearly."""
    from refineformer3d.data import BiasFieldCorrectiond

    biased, brain, _ = _biased_brain()
    image = MetaTensor(biased[None], affine=torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0])))
    exact, interpolated = (
        BiasFieldCorrectiond("image", shrink_factor=4, interpolate_field=i)({"image": image})["image"][0]
        for i in (False, True)
    )
    relative = ((interpolated - exact).abs() / exact.clamp_min(1e-6))[brain]
    assert float(relative.median()) < 0.01 and float(relative.max()) < 0.1
    assert not torch.equal(interpolated, exact), "interpolated, not evaluated at every voxel"


def test_bias_field_correction_checks_its_arguments_and_the_image():
    from refineformer3d.data import BiasFieldCorrectiond

    for bad in ({"shrink_factor": 0}, {"iterations": ()}):
        with pytest.raises(ValueError, match="shrink_factor must be at least 1"):
            BiasFieldCorrectiond("image", **bad)
    one_channel = MetaTensor(torch.ones(8, 8, 8), meta={"filename_or_obj": "/study/flair.nii.gz"})
    with pytest.raises(ValueError, match=r"'image' \(/study/flair.nii.gz\) has shape \(8, 8, 8\)"):
        BiasFieldCorrectiond("image")({"image": one_channel})
