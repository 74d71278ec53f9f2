"""BraTS cases to one 4-D NIfTI per study in MONAI Label's datastore layout."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from refineformer3d.data import load_datalist, write_studies
from refineformer3d.data.studies import main


def test_cases_become_4d_studies_with_model_labels(tiny_brats, tmp_path):
    output = tmp_path / "studies"
    written = write_studies(tiny_brats, output)
    datalist = load_datalist(tiny_brats, verify=False, val_fraction=0.0, test_fraction=0.0)
    assert len(written) == len(datalist["training"]) + len(datalist["testing"]) == 10
    assert sorted(p.name for p in output.iterdir() if p.name.startswith(".")) == []  # no temporary files left

    entry = datalist["training"][0]
    study = nib.load(output / f"{entry['case']}.nii.gz")
    flair = nib.load(entry["image"][0])
    assert study.shape == (*flair.shape, 4)
    np.testing.assert_array_equal(study.affine, flair.affine)
    for channel, path in enumerate(entry["image"]):  # FLAIR, T1, T1ce, T2: the order the network was trained on
        np.testing.assert_array_equal(np.asarray(study.dataobj)[..., channel], np.asarray(nib.load(path).dataobj))

    raw = np.asarray(nib.load(entry["label"]).dataobj)
    label = np.asarray(nib.load(output / "labels" / "final" / f"{entry['case']}.nii.gz").dataobj)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label == 1, np.isin(raw, (1, 4)))  # tumour core: necrosis + enhancing
    np.testing.assert_array_equal(label == 2, raw == 2)  # edema
    # Unlabelled (validation) studies get an image and no label.
    labels = {p.name for p in (output / "labels" / "final").iterdir()}
    assert len(labels) == 8 and all(f"{e['case']}.nii.gz" not in labels for e in datalist["testing"])


def test_cli_limit_images_only_and_bad_input(tiny_brats, tmp_path, capsys):
    assert main([str(tiny_brats), str(tmp_path / "a"), "--limit", "2", "--no-labels"]) == 0
    assert len(list((tmp_path / "a").glob("*.nii.gz"))) == 2
    assert list((tmp_path / "a" / "labels" / "final").iterdir()) == []
    assert main([str(tmp_path / "missing"), str(tmp_path / "b")]) == 2
    assert "does not exist" in capsys.readouterr().err
