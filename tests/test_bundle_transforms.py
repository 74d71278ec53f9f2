"""The transform lists declared in the bundle's JSON, applied to real (synthetic) BraTS files."""

from __future__ import annotations

import json

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


def _lesion_postprocessing(**override):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update(override)
    from monai.transforms import Compose

    return Compose(parser.get_parsed_content("lesion_postprocessing"))


def _label(spacing=(1.0, 1.0, 1.0)):
    """(1, 40, 40, 40): a 20^3 tumour (core inside edema), a 5^3 edema island (125 voxels) and a 2^3 one (8)."""
    from monai.data import MetaTensor

    label = torch.zeros(1, 40, 40, 40)
    label[0, 5:25, 5:25, 5:25] = 2
    label[0, 10:20, 10:20, 10:20] = 1
    label[0, 30:35, 30:35, 30:35] = 2
    label[0, 36:38, 2:4, 2:4] = 2
    return MetaTensor(label, affine=torch.diag(torch.tensor([*spacing, 1.0])))


def test_lesion_postprocessing_removes_islands_below_the_ml_threshold():
    label = _label()
    out = _lesion_postprocessing(min_lesion_ml=0.1, keep_largest_lesion=False)({"pred": label})["pred"]
    assert torch.equal(out[0, :25, :25, :25], label[0, :25, :25, :25]), "the tumour itself is untouched"
    assert (out[0, 30:35, 30:35, 30:35] == 2).all(), "0.125 mL is kept at 0.1 mL"
    assert (out[0, 36:38, 2:4, 2:4] == 0).all(), "0.008 mL is removed"
    # In mL, not voxels: at 2 mm voxels the 125-voxel island is 1 mL and the 8-voxel one 0.064 mL.
    out = _lesion_postprocessing(min_lesion_ml=0.5, keep_largest_lesion=False)({"pred": _label((2.0, 2.0, 2.0))})[
        "pred"
    ]
    assert (out[0, 30:35, 30:35, 30:35] == 2).all() and (out[0, 36:38, 2:4, 2:4] == 0).all()
    out = _lesion_postprocessing(min_lesion_ml=0.0)({"pred": _label()})["pred"]
    assert int((out > 0).sum()) == 20**3, "keep_largest_lesion, on by default, keeps only the tumour"


def test_small_enhancing_tumour_becomes_necrosis_in_the_regions_scheme():
    label = _label()
    label[0, 14:16, 14:16, 14:16] = 4  # 8 voxels of enhancing tumour inside the core: 0.008 mL
    out = _lesion_postprocessing(label_scheme="regions", min_enhancing_ml=0.01)({"pred": label.clone()})["pred"]
    assert not (out == 4).any() and (out[0, 14:16, 14:16, 14:16] == 1).all()
    out = _lesion_postprocessing(label_scheme="regions", min_enhancing_ml=0.005)({"pred": label.clone()})["pred"]
    assert (out[0, 14:16, 14:16, 14:16] == 4).all(), "above the threshold: kept"
    out = _lesion_postprocessing(label_scheme="classes", min_enhancing_ml=0.01)({"pred": _label()})["pred"]
    assert set(torch.unique(out).tolist()) == {0.0, 1.0, 2.0}, "the classes scheme has no enhancing label to move"


@pytest.mark.parametrize("overlays", [("augment.json",), ("regions.json", "augment.json")], ids=["classes", "regions"])
def test_augment_overlay_adds_its_transforms_after_the_crop(tiny_brats, overlays):
    from monai.transforms import RandCropByPosNegLabeld

    parser = _parser(tiny_brats, *overlays, roi_size=[32, 32, 32])
    names = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    # the bias field on the scanner's intensities, one field per sequence, then the normalisation: cached before
    acquisition = ["SplitDimd", *["RandBiasFieldd"] * 4, "ConcatItemsd", "DeleteItemsd", "NormalizeIntensityd"]
    start = names.index("SplitDimd")
    assert names[start : start + len(acquisition)] == acquisition and names.count("NormalizeIntensityd") == 1
    assert names[start - 1] == "EnsureTyped" and names[start + len(acquisition)] == "RandCropByPosNegLabeld"
    crop = names.index("RandCropByPosNegLabeld")
    added = [
        "RandAffined",
        "RandSimulateLowResolutiond",
        "RandAdjustContrastd",
        "RandHistogramShiftd",
        "RandGaussianNoised",
        "RandDropSequenced",
    ]
    assert names[crop + 1 : crop + 1 + len(added)] == added and names[crop + 1 + len(added)] == "RandFlipd"
    # Every transform applied, whatever the draw: probabilities 1.
    preprocessing = parser.get_parsed_content("train#preprocessing")
    for transform in preprocessing.transforms:
        if not isinstance(transform, RandCropByPosNegLabeld) and hasattr(transform, "prob"):
            transform.prob = 1.0
            for inner in vars(transform).values():
                if hasattr(inner, "prob"):
                    inner.prob = 1.0
    preprocessing.set_random_state(0)
    plain = _parser(tiny_brats, *overlays[:-1], roi_size=[32, 32, 32]).get_parsed_content("train#preprocessing")
    plain.set_random_state(0)
    entry = parser.get_parsed_content("train_datalist")[0]
    samples, reference = preprocessing(entry), plain(entry)
    values = {0.0, 1.0} if "regions.json" in overlays else {0.0, 1.0, 2.0}
    for sample, before in zip(samples, reference, strict=True):
        assert sample["image"].shape == before["image"].shape == (4, 32, 32, 32)
        assert torch.isfinite(sample["image"]).all() and not torch.equal(sample["image"], before["image"])
        assert set(torch.unique(sample["label"]).tolist()) <= values


def test_augment_overlay_draws_a_bias_field_per_sequence_before_normalising(tiny_brats):
    """Each channel gets its own field, on raw intensities: the study after the fields differs from a shared field."""
    from monai.transforms import Compose

    parser = _parser(tiny_brats, "augment.json")
    parser["augment_transforms"] = []
    transforms = parser.get_parsed_content("train#preprocessing").transforms
    split = [type(t).__name__ for t in transforms].index("SplitDimd")
    before, fields = Compose(transforms[:split]), Compose(transforms[split : split + 7])
    for t in fields.transforms:
        if hasattr(t, "prob"):
            t.prob = 1.0
    fields.set_random_state(0)
    study = before(parser.get_parsed_content("train_datalist")[0])
    raw = study["image"].clone()
    out = fields(study)
    assert [k for k in out if k.startswith("image")] == ["image"], "the per-sequence copies are removed"
    image = out["image"]
    brain = raw[0] > 0
    ratios = image[:, brain] / raw[:, brain]  # each channel's field, sampled in the brain
    assert (image[:, ~brain] == 0).all(), "the background stays zero, so the nonzero normalisation sees the same brain"
    assert not torch.allclose(ratios[0], ratios[1], rtol=1e-3), "the sequences' fields differ"
    assert ratios.min() > 0.2 and ratios.max() < 5.0 and ratios.std(dim=1).min() > 1e-3


def test_augment_overlay_bias_field_strength_is_a_config_key(tiny_brats):
    parser = _parser(tiny_brats, "augment.json")
    # coefficients of either sign by default: MONAI draws every Legendre coefficient from the range, and a range of
    # positive values alone makes every field brighten the same corners of the volume
    default = [t for t in parser.get_parsed_content("train#preprocessing").transforms if hasattr(t, "rand_bias_field")]
    assert {(t.prob, t.rand_bias_field.coeff_range) for t in default} == {(0.5, (-0.2, 0.2))}
    parser = _parser(tiny_brats, "augment.json")
    parser["bias_field_prob"], parser["bias_field_coeff_range"] = 0.7, "$(0.0, 0.3)"
    fields = [t for t in parser.get_parsed_content("train#preprocessing").transforms if hasattr(t, "rand_bias_field")]
    assert len(fields) == 4 and all(t.prob == 0.7 and t.rand_bias_field.coeff_range == (0.0, 0.3) for t in fields)
    # without a field, the deterministic part is validation's, normalisation included: one cache file serves both
    parser = _parser(tiny_brats, "augment.json")
    parser["bias_field_prob"] = 0.0
    transforms = parser.get_parsed_content("train#preprocessing").transforms
    deterministic = parser.get_parsed_content("validate#preprocessing").transforms
    assert [type(t) for t in transforms[: len(deterministic)]] == [type(t) for t in deterministic]
    assert type(transforms[len(deterministic)]).__name__ == "RandCropByPosNegLabeld"


def test_training_smooths_some_crops_so_resampled_studies_do_not_look_like_tumour(tiny_brats):
    """The last two random transforms: Gaussian noise and Gaussian smoothing, each with its probability key."""
    transforms = _parser(tiny_brats).get_parsed_content("train#preprocessing").transforms
    assert [type(t).__name__ for t in transforms[-2:]] == ["RandGaussianNoised", "RandGaussianSmoothd"]
    assert (transforms[-2].prob, transforms[-1].prob) == (0.1, 0.2)

    def crops(smooth_prob):
        parser = _parser(tiny_brats, roi_size=[32, 32, 32], noise_prob=0.0, smooth_prob=smooth_prob)
        preprocessing = parser.get_parsed_content("train#preprocessing")
        preprocessing.set_random_state(0)
        return [c["image"] for c in preprocessing(parser.get_parsed_content("train_datalist")[0])]

    def roughness(image):  # mean squared difference of neighbouring voxels: what smoothing takes away
        return float(sum(torch.diff(image, dim=d).pow(2).mean() for d in (1, 2, 3)))

    for smoothed, plain, again in zip(crops(1.0), crops(0.0), crops(0.0), strict=True):
        assert torch.equal(plain, again), "at probability 0 the crops are what they were"
        assert smoothed.shape == plain.shape and roughness(smoothed) < 0.7 * roughness(plain)


def test_bias_correction_is_on_by_default():
    """The shipped weights were trained with N4, so training, evaluation and inference run it unless told not to."""
    for name in ("train.json", "inference.json"):
        assert json.loads((CONFIGS / name).read_text())["bias_correction"] is True, name


@pytest.mark.parametrize("value", [False, "false", "False"])
def test_bias_correction_can_be_switched_off(tiny_brats, value):
    parser = _parser(tiny_brats, bias_correction=value)
    names = [type(t).__name__ for t in parser.get_parsed_content("validate#preprocessing").transforms]
    assert "BiasFieldCorrectiond" not in names and "NormalizeIntensityd" in names


def test_bias_correction_runs_on_the_cropped_study_before_normalising(tiny_brats):
    """One key switches N4 on in training, validation (and so evaluate.json) and inference, at the same place."""
    inference = ConfigParser()
    inference.read_config(str(CONFIGS / "inference.json"))
    inference.update({"bias_correction": "true"})  # as a command line passes it
    parser = _parser(tiny_brats, bias_correction=True)
    for pipeline in (
        parser.get_parsed_content("train#preprocessing"),
        parser.get_parsed_content("validate#preprocessing"),
        inference.get_parsed_content("preprocessing"),
    ):
        names = [type(t).__name__ for t in pipeline.transforms]
        at = names.index("BiasFieldCorrectiond")
        assert names[at - 1] == "CropForegroundd" and names[at + 1] == "NormalizeIntensityd"
    entry = parser.get_parsed_content("val_datalist")[0]
    corrected = parser.get_parsed_content("validate#preprocessing")(entry)["image"]
    plain = _parser(tiny_brats, bias_correction=False).get_parsed_content("validate#preprocessing")(entry)["image"]
    assert corrected.shape == plain.shape and torch.isfinite(corrected).all()
    assert torch.equal(corrected != 0, plain != 0), "the brain and the background are where they were"
    assert not torch.allclose(corrected, plain, atol=1e-3)
    # MONAI's str2bool reads the key: a value that is not a yes or a no fails, naming the key and the value
    with pytest.raises(RuntimeError, match="bias_correction") as error:
        _parser(tiny_brats, bias_correction="maybe").get_parsed_content("validate#preprocessing")
    assert '"maybe"' in str(error.value.__cause__)
