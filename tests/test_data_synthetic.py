"""The synthetic BraTS studies: layout, file format, determinism, contrasts, caching, and the command line."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from refineformer3d.data import build_datalist, detect_layout, ensure_dataset, make_case, make_dataset, synthetic

SHAPE = (64, 64, 48)
MODALITIES = ("flair", "t1", "t1ce", "t2")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Three labelled cases (case 2 is LGG) and one unlabelled, small enough for CPU tests."""
    return make_dataset(
        tmp_path_factory.mktemp("synthetic") / "brats", cases=3, validation_cases=1, seed=0, shape=SHAPE
    )


def files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_brats2017_layout(dataset):
    training = dataset / "Brats17TrainingData"
    assert sorted(p.name for p in (training / "HGG").iterdir()) == ["Brats17_SYN_0001_1", "Brats17_SYN_0003_1"]
    assert sorted(p.name for p in (training / "LGG").iterdir()) == ["Brats17_SYN_0002_1"]
    case = training / "HGG" / "Brats17_SYN_0001_1"
    assert sorted(p.name for p in case.iterdir()) == [
        f"Brats17_SYN_0001_1_{m}.nii.gz" for m in ("flair", "seg", "t1", "t1ce", "t2")
    ]
    validation = dataset / "Brats17ValidationData" / "Brats17_SYNVAL_0001_1"
    assert sorted(p.name for p in validation.iterdir()) == [
        f"Brats17_SYNVAL_0001_1_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")
    ]
    assert detect_layout(dataset) == "brats2017"
    datalist = build_datalist(dataset, val_fraction=0.34, test_fraction=0.0)  # verifies every file
    assert len(datalist["training"]) == 2 and len(datalist["validation"]) == 1
    assert [e["case"] for e in datalist["testing"]] == ["Brats17_SYNVAL_0001_1"]
    assert not [p for p in dataset.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_file_format(dataset):
    for case in sorted((dataset / "Brats17TrainingData").glob("*/*")):
        images = [nib.load(case / f"{case.name}_{m}.nii.gz") for m in MODALITIES]
        label = nib.load(case / f"{case.name}_seg.nii.gz")
        for image in (*images, label):
            assert image.shape == SHAPE
            assert image.header.get_zooms() == (1.0, 1.0, 1.0)
            np.testing.assert_array_equal(image.affine, images[0].affine)
            assert nib.aff2axcodes(image.affine) == ("L", "P", "S")  # as BraTS
        assert all(image.get_data_dtype() == np.int16 for image in images)
        assert label.get_data_dtype() == np.uint8
        data = np.stack([np.asanyarray(i.dataobj) for i in images])
        values = np.asanyarray(label.dataobj)
        assert data.min() == 0
        brain = data[0] > 0
        # Skull-stripped: the same zero background in every modality, and no label outside the brain.
        assert all(np.array_equal(channel > 0, brain) for channel in data)
        assert 0.05 < brain.mean() < 0.6
        assert not values[~brain].any()
        assert set(np.unique(values)) <= {0, 1, 2, 4}
        assert {1, 2} <= set(np.unique(values))


def test_full_size_grid_and_placement():
    case = make_case(seed=0, index=1)
    assert case.images.shape == (4, 240, 240, 155) and case.label.shape == (240, 240, 155)
    brain = np.argwhere(case.images[0] > 0)
    # The brain fits inside the grid with background on every side, roughly centred.
    assert (brain.min(axis=0) > 0).all() and (brain.max(axis=0) < np.array([239, 239, 154])).all()
    np.testing.assert_allclose(brain.mean(axis=0), [119.5, 119.5, 77], atol=15)


def test_same_seed_same_bytes(dataset, tmp_path):
    again = make_dataset(tmp_path / "again", cases=3, validation_cases=1, seed=0, shape=SHAPE)
    assert files(again) == files(dataset)


def test_cases_do_not_depend_on_the_number_of_cases(dataset):
    case = make_case(seed=0, index=3, shape=SHAPE)
    path = dataset / "Brats17TrainingData" / "HGG" / case.name / f"{case.name}_t1ce.nii.gz"
    np.testing.assert_array_equal(np.asanyarray(nib.load(path).dataobj), case.images[2])


def test_seeds_differ():
    a, b = make_case(0, 1, SHAPE), make_case(1, 1, SHAPE)
    assert not np.array_equal(a.label, b.label)
    assert not np.array_equal(make_case(0, 1, SHAPE, validation=True).images, a.images)


def test_contrast_ordering():
    cases = [make_case(0, i, SHAPE) for i in (1, 3, 5)]
    assert all(c.grade == "HGG" and (c.label == 4).any() for c in cases)
    for case in cases:
        flair, t1, t1ce, t2 = (image.astype(np.float64) for image in case.images)
        normal = case.label == 0
        csf, wm = normal & (case.tissue == 1), normal & (case.tissue == 3)
        edema, enhancing, core = case.label == 2, case.label == 4, np.isin(case.label, (1, 4))
        assert flair[edema].mean() > flair[wm].mean() > flair[csf].mean()  # FLAIR: edema bright, CSF dark
        assert t2[csf].mean() > t2[wm].mean() and t2[edema].mean() > t2[wm].mean()  # T2: edema and CSF bright
        assert t1ce[enhancing].mean() > 1.3 * max(t1ce[m].mean() for m in (csf, wm, edema, case.label == 1))
        assert t1[core].mean() < t1[wm].mean()  # T1: tumour dark
        # Not one-channel thresholdable: on T2, edema and CSF overlap.
        assert np.percentile(t2[csf], 75) > np.percentile(t2[edema], 25)


def test_some_cases_have_no_enhancing_tumour():
    lgg = [make_case(0, i, SHAPE) for i in (2, 6, 10, 14)]
    assert all(c.grade == "LGG" for c in lgg)
    assert any(not (c.label == 4).any() for c in lgg)
    assert all((c.label == 1).any() and (c.label == 2).any() for c in lgg)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="at least 32"):
        make_dataset(tmp_path / "a", shape=(16, 64, 64))
    with pytest.raises(ValueError, match="at least one case"):
        make_dataset(tmp_path / "a", cases=0, validation_cases=0)
    with pytest.raises(ValueError, match="seed"):
        make_case(seed=-1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        make_dataset(tmp_path / "full", cases=1, validation_cases=0, shape=(32, 32, 32))
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["notes.txt"]
    make_dataset(tmp_path / "full", cases=1, validation_cases=0, shape=(32, 32, 32), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["Brats17TrainingData", "synthetic.json"]


def test_crash_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return make_case(*args, **kwargs)

    monkeypatch.setattr(synthetic.dataset, "make_case", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        make_dataset(tmp_path / "brats", cases=2, validation_cases=0, shape=(32, 32, 32))
    assert list(tmp_path.iterdir()) == []


def test_ensure_dataset_makes_once_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINEFORMER3D_CACHE", str(tmp_path / "cache"))
    root = ensure_dataset(cases=1, validation_cases=1, seed=2, shape=(32, 32, 32))
    assert Path(root).parent == tmp_path / "cache" and "s2" in Path(root).name
    before = files(Path(root))
    monkeypatch.setattr(
        synthetic.dataset, "_write_dataset", lambda *a, **k: pytest.fail("regenerated a complete dataset")
    )
    assert ensure_dataset(cases=1, validation_cases=1, seed=2, shape=(32, 32, 32)) == root
    assert files(Path(root)) == before
    with pytest.raises(pytest.fail.Exception):  # other parameters: another dataset
        ensure_dataset(cases=1, validation_cases=1, seed=3, shape=(32, 32, 32))


def test_ensure_dataset_from_two_processes_at_once(tmp_path):
    # flock locks belong to open files, so two threads contend exactly as two DDP ranks would.
    results, errors = [], []

    def run():
        try:
            results.append(ensure_dataset(tmp_path, cases=2, validation_cases=0, seed=0, shape=(32, 32, 32)))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([Path(results[0]).name, Path(results[0]).name + ".lock"])  # no staging folder left
    assert len(build_datalist(results[0], val_fraction=0.0, test_fraction=0.0)["training"]) == 2


def test_cli_with_preview(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    output = tmp_path / "brats"
    assert (
        synthetic.main(
            [
                "--output",
                str(output),
                "--cases",
                "1",
                "--validation_cases",
                "1",
                "--seed",
                "0",
                "--shape",
                "48",
                "48",
                "40",
                "--preview",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(output)
    previews = sorted(p.name for p in (output / "preview").iterdir())
    assert previews == ["Brats17_SYNVAL_0001_1.png", "Brats17_SYN_0001_1.png"]
    assert (output / "preview" / previews[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_input(tmp_path, capsys):
    assert synthetic.main(["--output", str(tmp_path / "out"), "--shape", "8", "8", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: shape must be") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_full_size_case_takes_seconds():
    import time

    make_case(0, 1)  # loads the template
    start = time.perf_counter()
    make_case(0, 2)
    assert time.perf_counter() - start < 10


def test_default_marker_names_no_recipe(dataset):
    """Default datasets keep the marker (and so the cache) they had before recipes existed."""
    marker = json.loads((dataset / "synthetic.json").read_text())
    assert "recipe" not in marker and "contrast_jitter" not in marker


def test_shifted_recipe_differs_and_labels_stay_valid(tmp_path):
    root = make_dataset(tmp_path / "ood", cases=2, validation_cases=0, seed=0, shape=SHAPE, recipe="shifted")
    assert json.loads((root / "synthetic.json").read_text())["recipe"] == "shifted"
    ratios = {}
    for recipe in synthetic.RECIPES:
        cases = [make_case(0, i, SHAPE, recipe=recipe) for i in (1, 3, 4, 5)]
        for case in cases:
            assert set(np.unique(case.label)) <= {0, 1, 2, 4}
            assert np.isin(case.label, (1, 4)).any() and (case.label == 2).any()
            assert (case.images[:, case.label > 0] > 0).all()  # tumour lies inside the brain
        flair = [
            (c.images[0][c.label == 2].mean(), c.images[0][(c.label == 0) & (c.tissue == 3)].mean()) for c in cases
        ]
        ratios[recipe] = np.mean([edema / wm for edema, wm in flair])
    shifted, default = make_case(0, 1, SHAPE, recipe="shifted"), make_case(0, 1, SHAPE)
    assert not np.array_equal(shifted.label, default.label)
    assert ratios["shifted"] < ratios["default"] - 0.15  # FLAIR edema much less bright against white matter


def test_shifted_recipe_parts_trace_each_change(tmp_path):
    default, shifted = make_case(0, 3, SHAPE), make_case(0, 3, SHAPE, recipe="shifted")
    every_part = make_case(0, 3, SHAPE, recipe="shifted:" + "+".join(synthetic.SHIFTS))
    assert np.array_equal(every_part.images, shifted.images) and np.array_equal(every_part.label, shifted.label)
    # tumour shape comes from "tumours" alone; the acquisition parts change images, never anatomy or labels
    assert np.array_equal(make_case(0, 3, SHAPE, recipe="shifted:tumours").label, shifted.label)
    for part in ("contrast", "noise", "bias", "slices"):
        case = make_case(0, 3, SHAPE, recipe=f"shifted:{part}")
        assert np.array_equal(case.label, default.label) and np.array_equal(case.tissue, default.tissue), part
        assert not np.array_equal(case.images, default.images), part
    # each part changes what it names: the bias part spreads white matter's level, the slices part smooths one axis
    wm = (default.tissue == 3) & (default.label == 0)

    def spread(case):
        return np.std(np.log(case.images[1][wm].astype(float)))

    assert spread(make_case(0, 3, SHAPE, recipe="shifted:bias")) > spread(
        make_case(0, 3, SHAPE, recipe="shifted:noise")
    )
    root = ensure_dataset(tmp_path, cases=1, validation_cases=0, shape=SHAPE, recipe="shifted:bias+slices")
    root = Path(root)
    assert root.name.endswith("-shifted-bias-slices")
    assert json.loads((root / "synthetic.json").read_text())["recipe"] == "shifted:bias+slices"


def test_thick_slices_smooth_one_axis_only():
    from refineformer3d.data.synthetic.phantom import _thick_slices

    volume = np.random.default_rng(0).standard_normal((40, 41, 42)).astype(np.float32)
    thick = _thick_slices(volume, axis=1, thickness=4)
    assert thick.shape == volume.shape
    assert np.abs(np.diff(thick, axis=1)).mean() < 0.5 * np.abs(np.diff(thick, axis=0)).mean()
    np.testing.assert_allclose(np.take(thick, [0, 4, 8], axis=1).std(), np.take(thick, [0, 4, 8], axis=1).std())


def test_thick_slices_of_a_fraction_of_a_voxel():
    from scipy import ndimage

    from refineformer3d.data.synthetic.phantom import _thick_slices

    volume = np.random.default_rng(1).standard_normal((30, 31, 32)).astype(np.float32)
    # a whole thickness given as a float is the same acquisition
    np.testing.assert_array_equal(_thick_slices(volume, 2, 3), _thick_slices(volume, 2, 3.0))
    thin, thick = _thick_slices(volume, 2, 2.5), _thick_slices(volume, 2, 5.0)
    assert thin.shape == volume.shape

    def roughness(x, axis):
        return np.abs(np.diff(x, axis=axis)).mean()

    # smoother along the slice axis the thicker the slices
    assert roughness(thick, 2) < roughness(thin, 2) < roughness(volume, 2)
    # slices centred on a voxel (0, 5, 10, ...) read the slab's average there, those between voxels (2.5, 7.5) the
    # mean of the two neighbours'
    blurred = ndimage.gaussian_filter1d(volume, 2.5 / 2.355, axis=2, mode="nearest")
    np.testing.assert_allclose(thin[:, :, [0, 5, 10]], blurred[:, :, [0, 5, 10]], atol=1e-6)
    # voxel 7 lies 0.8 of the way from the slice at 5 to the slice at 7.5
    expected = 0.2 * blurred[:, :, 5] + 0.8 * (blurred[:, :, 7] + blurred[:, :, 8]) / 2
    np.testing.assert_allclose(thin[:, :, 7], expected, atol=1e-5)


def test_slice_thickness_is_in_mm_of_the_brats_grid():
    from refineformer3d.data.synthetic.phantom import BRATS_SHAPE, grid_scale

    assert grid_scale(BRATS_SHAPE) == 1.0
    # half size is a 2 mm study: its 3-5 mm slices are 1.4-2.4 voxels, not 3-5 (6-10 mm of that brain)
    assert 0.45 < grid_scale((120, 120, 78)) < 0.5
    # the brain is never enlarged beyond the template, which fills BraTS's grid to 0.95
    assert 1.0 < grid_scale((480, 480, 310)) < 1.1


def test_contrast_jitter_changes_intensities_only():
    plain, jittered = make_case(0, 3, SHAPE), make_case(0, 3, SHAPE, contrast_jitter=0.3)
    assert np.array_equal(plain.label, jittered.label) and np.array_equal(plain.tissue, jittered.tissue)
    assert np.array_equal(plain.images > 0, jittered.images > 0)
    ratio = jittered.images[:, plain.label == 2].mean(axis=1) / plain.images[:, plain.label == 2].mean(axis=1)
    assert np.abs(np.log(ratio)).max() > 0.03
    assert np.array_equal(make_case(0, 3, SHAPE, contrast_jitter=0.0).images, plain.images)


def test_recipe_bad_arguments(tmp_path, capsys):
    for recipe in ("other", "shifted:", "shifted:glare", "shifted:bias+", "default:bias"):
        with pytest.raises(ValueError, match="unknown recipe"):
            make_case(0, 1, SHAPE, recipe=recipe)
    assert synthetic.main(["--output", str(tmp_path / "out"), "--recipe", "shifted:glare"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown recipe 'shifted:glare'") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="contrast_jitter"):
        ensure_dataset(tmp_path, cases=1, validation_cases=0, shape=SHAPE, contrast_jitter=-1)
    assert synthetic.main(["--output", str(tmp_path / "out"), "--contrast_jitter", "-0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: contrast_jitter") and err.count("\n") == 1 and not (tmp_path / "out").exists()
