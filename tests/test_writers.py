"""The inference writer: complete files or none, never over an input; outputs named after the study."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor, NibabelWriter
from monai.transforms import SaveImage

from refineformer3d.writers import AtomicNibabelWriter, study_name_formatter


def _save(output_dir, source):
    image = MetaTensor(
        torch.ones(1, 4, 5, 6, dtype=torch.uint8), affine=torch.eye(4), meta={"filename_or_obj": str(source)}
    )
    saver = SaveImage(
        output_dir=output_dir,
        output_postfix="seg",
        output_dtype=np.uint8,
        separate_folder=False,
        output_name_formatter=study_name_formatter,
        writer=AtomicNibabelWriter,
        print_log=False,
    )
    saver(image)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Brats17_X_1_flair.nii.gz", "Brats17_X_1"),
        ("C-t2f.nii.gz", "C"),
        ("BRATS_001.nii.gz", "BRATS_001"),
        ("case_0000.nii", "case"),
    ],
)
def test_outputs_are_named_after_the_study(tmp_path, name, expected):
    _save(tmp_path, tmp_path / "in" / name)
    written = tmp_path / f"{expected}_seg.nii.gz"
    assert written.exists() and nib.load(written).shape == (4, 5, 6)
    assert oct(os.stat(written).st_mode & 0o777) == oct(0o666 & ~_umask())
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == [written.name]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(self, filename, verbose=False, **kwargs):
        open(filename, "wb").write(b"\x1f\x8b truncated")
        raise KeyboardInterrupt

    monkeypatch.setattr(NibabelWriter, "write", broken)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, tmp_path / "case_flair.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_never_overwrites_a_file_beside_the_inputs(tmp_path):
    case = tmp_path / "Brats17_X_1"
    case.mkdir()
    label = case / "Brats17_X_1_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), np.eye(4)), label)
    before = label.read_bytes()
    # SaveImage re-raises a writer's error as a RuntimeError that quotes it
    with pytest.raises(RuntimeError, match="refusing to overwrite"):
        _save(case, case / "Brats17_X_1_flair.nii.gz")  # output_dir = the case folder: the name is the label's
    assert label.read_bytes() == before
    assert sorted(p.name for p in case.iterdir()) == [label.name]
