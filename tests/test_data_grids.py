"""One study's modalities onto the reference grid: formats, DICOM, mixed grids, the overlap check, skull stripping."""

from __future__ import annotations

import numpy as np
import pytest
from _studies import (
    BIDS,
    DICOM_DESCRIPTIONS,
    MIXED,
    brats,
    dicom,
    flipped_to_ras,
    mixed_grids,
    named,
    rigidly_moved,
    save_nifti,
    thick_slices,
)
from scipy.ndimage import uniform_filter1d

from refineformer3d.data import InputError, LoadStudyd, check_grids, find_studies, make_case
from refineformer3d.data.grids import overlap_fraction, read_geometry, skull_strip_warning
from refineformer3d.handlers import StudyBatch


@pytest.fixture(scope="module")
def case():
    return make_case(seed=0, index=1, shape=(48, 48, 40))


@pytest.fixture(scope="module")
def reference(case, tmp_path_factory):
    """The study loaded from the BraTS layout: the old four-files-stacked path."""
    folder = brats(tmp_path_factory.mktemp("brats"), case.name, case.images, case.affine)
    (study,) = find_studies(folder)
    return LoadStudyd("image")(study)["image"]


def load(folder, **kwargs):
    (study,) = check_grids(find_studies(folder))
    return LoadStudyd("image", **kwargs)(study)["image"]


def test_brats_layout_loads_as_the_four_files_stacked(case, reference):
    assert reference.shape == (4, *case.images.shape[1:])
    np.testing.assert_array_equal(reference.numpy(), case.images.astype(np.float32))
    np.testing.assert_allclose(reference.affine.numpy(), case.affine, atol=1e-6)
    assert reference.meta["study"] == case.name
    assert list(reference.meta["modality_files"]) == ["flair", "t1", "t1ce", "t2"]
    assert reference.meta["skull_strip_warning"] == ""


@pytest.mark.parametrize("layout", ["bids", "nrrd-mha", "dicom"])
def test_every_format_gives_the_same_image(case, reference, tmp_path, layout):
    if layout == "dicom":
        folder = dicom(tmp_path / "Study1", case.images, case.affine, DICOM_DESCRIPTIONS, agent="Gadobutrol")
    else:
        folder = named(tmp_path / "study", BIDS if layout == "bids" else MIXED, case.images, case.affine)
    image = load(folder)
    np.testing.assert_array_equal(image.numpy(), reference.numpy())
    np.testing.assert_allclose(image.affine.numpy(), reference.affine.numpy(), atol=1e-4)


def test_mixed_grids_are_resampled_onto_the_t1ce_grid_in_world_space(case, reference, tmp_path):
    image = load(mixed_grids(tmp_path / "study", case.images, case.affine))
    assert image.shape == reference.shape
    np.testing.assert_allclose(image.affine.numpy(), case.affine, atol=1e-6)
    # FLAIR stored with its in-plane axes reversed lands voxel for voxel.
    np.testing.assert_allclose(image[0].numpy(), reference[0].numpy(), atol=1e-3)
    # T2 in 3 mm slabs: back on the 1 mm grid it matches the original smoothed over 3 slices, and best unshifted.
    smoothed = uniform_filter1d(reference[3].numpy(), 3, axis=2)[:, :, 3:-3]
    resampled = image[3].numpy()[:, :, 3:-3]
    agreement = {s: np.corrcoef(np.roll(smoothed, s, axis=2).ravel(), resampled.ravel())[0, 1] for s in (-1, 0, 1)}
    assert agreement[0] > 0.97
    assert agreement[0] > max(agreement[-1], agreement[1]) + 0.01


def test_reference_modality_chooses_the_grid(case, tmp_path):
    folder = mixed_grids(tmp_path / "study", case.images, case.affine)
    image = load(folder, reference_modality="t2")
    thick, affine = thick_slices(case.images[3], case.affine)
    assert image.shape[1:] == thick.shape
    np.testing.assert_allclose(image.affine.numpy(), affine, atol=1e-6)
    with pytest.raises(ValueError, match="reference_modality must be one of"):
        LoadStudyd("image", reference_modality="pd")


def test_modalities_that_do_not_overlap_are_named_before_anything_is_read(case, tmp_path, capsys):
    folder = named(
        tmp_path / "mystudy", {m: f"{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")}, case.images, case.affine
    )
    far = case.affine.copy()
    far[:3, 3] += (0.0, 200.0, 0.0)  # another scanner's coordinates: no overlap at all
    save_nifti(folder / "t2.nii.gz", case.images[3], far)
    with pytest.raises(ValueError) as caught:
        check_grids(find_studies(folder))
    message = str(caught.value)
    assert message.startswith("study mystudy: T2 t2.nii.gz covers 0% of the T1ce field of view (t1ce.nii.gz)")
    assert "\n" not in message
    # As inference.json's study batch: the study is named on stderr and the run ends with exit status 2.
    with pytest.raises(InputError) as exited:
        StudyBatch(folder, tmp_path / "out")
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(message)
    assert not (tmp_path / "out").exists()
    # Opting in to co-registration lets it through to registration; "auto" registers only head motion, and refuses.
    assert check_grids(find_studies(folder), coregister=True)
    with pytest.raises(ValueError, match="covers 0%"):
        check_grids(find_studies(folder), coregister="auto")
    with pytest.raises(ValueError, match="coregister must be auto, true or false, got 'yes'"):
        check_grids(find_studies(folder), coregister="yes")


def test_overlap_fraction_and_header_geometry(case, tmp_path):
    path = save_nifti(tmp_path / "a.nii.gz", case.images[0], case.affine)
    geometry = read_geometry(path)
    assert geometry[1] == case.images.shape[1:]
    assert overlap_fraction(geometry, geometry) == pytest.approx(1.0)
    flipped = save_nifti(tmp_path / "b.nii.gz", *flipped_to_ras(case.images[0], case.affine))
    assert overlap_fraction(geometry, read_geometry(flipped)) == pytest.approx(1.0)
    half = case.affine.copy()
    half[0, 3] -= case.images.shape[1] / 2  # half a field of view to the right (RAS x is flipped in this affine)
    assert overlap_fraction(geometry, (half, geometry[1])) == pytest.approx(0.5, abs=0.02)


def test_unstripped_looking_scans_are_flagged(case):
    assert skull_strip_warning(case.images[2], case.affine) == ""
    rng = np.random.default_rng(0)
    unstripped = case.images[2] + rng.integers(1, 30, size=case.images[2].shape)  # noisy air, no zero background
    assert "looks not skull-stripped" in skull_strip_warning(unstripped, case.affine)
    big = np.ones((200, 200, 100))  # 4 L of non-zero voxels at 1 mm: a head, not a brain
    big = np.pad(big, 60)
    assert "looks not skull-stripped" in skull_strip_warning(big, np.eye(4))


@pytest.mark.slow  # about 35 s: four registrations
def test_opt_in_rigid_coregistration_recovers_a_rotated_and_shifted_t2(case, reference, tmp_path):
    folder = named(
        tmp_path / "mystudy", {m: f"{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")}, case.images, case.affine
    )
    save_nifti(folder / "t2.nii.gz", case.images[3], rigidly_moved(case.images[3], case.affine, 4.0, (3.0, -2.0, 2.0)))
    truth = reference[3].numpy()
    brain = truth > 0
    moved = load(folder)[3].numpy()
    registered = load(folder, coregister=True)[3].numpy()
    error_moved = np.abs(moved - truth)[brain].mean()
    error_registered = np.abs(registered - truth)[brain].mean()
    assert error_registered < 0.5 * error_moved
    assert np.corrcoef(registered[brain], truth[brain])[0, 1] > 0.9
    # coregister "auto" (inference's default) registers the T2, on a grid of its own, and takes the others as they are.
    automatic = load(folder, coregister="auto").numpy()
    np.testing.assert_array_equal(automatic[:3], reference[:3].numpy())
    assert np.abs(automatic[3] - truth)[brain].mean() < 0.5 * error_moved
