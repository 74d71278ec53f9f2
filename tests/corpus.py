"""A corpus of bad and hostile studies, generated from one good synthetic BraTS case.

Each corruption copies the good case under a new name into a BraTS 2017 case folder (four modalities and a label)
and breaks it one way. It returns the pattern the error must match (naming the case and the file), or None for input
that must be accepted (a study with no tumour). The tests run every corruption through the datalist builder, the
training datalist check and inference.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

MODALITIES = ("flair", "t1", "t1ce", "t2")


@dataclass(frozen=True)
class Corruption:
    name: str
    apply: Callable[[Path, Path], str | None]  # (case folder, a folder outside the dataset) -> error pattern or None
    inference: bool = True  # does inference refuse it (it reads no label, and resamples each modality onto T1ce)
    builder: bool = True  # does the datalist builder refuse it (it does not resample, so it allows coarse grids)


def copy_case(source: Path, parent: Path, name: str) -> Path:
    """Copies a BraTS 2017 case folder under a new case name."""
    folder = parent / name
    folder.mkdir(parents=True)
    for path in source.iterdir():
        shutil.copy(path, folder / path.name.replace(source.name, name))
    return folder


def file_of(folder: Path, part: str) -> Path:
    return folder / f"{folder.name}_{part}.nii.gz"


def _rewrite(folder: Path, part: str, change: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]):
    path = file_of(folder, part)
    image = nib.load(path)
    data, affine = change(np.asanyarray(image.dataobj).copy(), image.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


def _expect(folder: Path, part: str, reason: str) -> str:
    return f"case {folder.name}: .*{folder.name}_{part}.nii.gz.*{reason}"


def truncated_gzip(folder, outside):
    path = file_of(folder, "flair")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return f"case {folder.name}: unreadable or truncated file .*{folder.name}_flair.nii.gz"


def not_gzip(folder, outside):
    file_of(folder, "t2").write_bytes(b"not a nifti file")
    return f"case {folder.name}: unreadable or truncated file .*{folder.name}_t2.nii.gz"


def corrupt_deflate_stream(folder, outside):
    path = file_of(folder, "t1")
    content = bytearray(path.read_bytes())
    middle = len(content) // 2
    content[middle : middle + 64] = bytes(64)  # the gzip header is intact; the compressed data is not
    path.write_bytes(bytes(content))
    return f"case {folder.name}: unreadable or truncated file .*{folder.name}_t1.nii.gz"


def empty_file(folder, outside):
    file_of(folder, "t1ce").write_bytes(b"")
    return f"case {folder.name}: unreadable or truncated file .*{folder.name}_t1ce.nii.gz"


def missing_modality(folder, outside):
    file_of(folder, "t1ce").unlink()
    return f"case {folder.name}: missing t1ce file .*{folder.name}_t1ce.nii.gz"


def no_flair_nor_t1ce(folder, outside):
    file_of(folder, "flair").unlink()
    file_of(folder, "t1ce").unlink()
    return f"case {folder.name}: (missing flair file|neither .*{folder.name}_flair.nii.gz nor .*_t1ce.nii.gz)"


def shape_mismatch(folder, outside):
    _rewrite(folder, "t2", lambda d, a: (d[:-4], a))
    return _expect(folder, "t2", r"shape \(\d+, \d+, \d+\) differs")


def affine_mismatch(folder, outside):
    def shift(data, affine):
        affine[0, 3] += 2.0
        return data, affine

    _rewrite(folder, "t1", shift)
    return _expect(folder, "t1", "affine differs")


def two_d_image(folder, outside):
    _rewrite(folder, "flair", lambda d, a: (np.ascontiguousarray(d[:, :, d.shape[2] // 2]), a))
    return _expect(folder, "flair", "2-D image")


def nan_voxels(folder, outside):
    def nan(data, affine):
        data = data.astype(np.float32)
        data[data.shape[0] // 2, data.shape[1] // 2, 3] = np.nan
        return data, affine

    _rewrite(folder, "flair", nan)
    return _expect(folder, "flair", "NaN or infinite")


def inf_voxels(folder, outside):
    def inf(data, affine):
        data = data.astype(np.float32)
        data[1, 2, 3] = np.inf
        return data, affine

    _rewrite(folder, "t1", inf)
    return _expect(folder, "t1", "NaN or infinite")


def all_zero_study(folder, outside):
    for part in MODALITIES:
        _rewrite(folder, part, lambda d, a: (np.zeros_like(d), a))
    return _expect(folder, "flair", "all zero")


def huge_header(folder, outside):
    """A header that claims a 30000^3 int16 volume (54 TB) in a file of a few hundred bytes."""
    path = file_of(folder, "flair")
    image = nib.Nifti1Image(np.zeros((2, 2, 2), dtype=np.int16), nib.load(path).affine)
    image.header.set_data_shape((30000, 30000, 30000))
    with gzip.open(path, "wb") as f:
        f.write(image.header.binaryblock + bytes(4) + bytes(64))
    return _expect(folder, "flair", "header claims a 30000x30000x30000 volume")


def absurd_spacing(folder, outside):
    for part in MODALITIES:
        _rewrite(folder, part, lambda d, a: (d, np.diag([1e4, 1e4, 1e4, 1.0])))
    return _expect(folder, "flair", "voxel size .* outside")


def tiny_spacing(folder, outside):
    """0.1 micrometre voxels: no scanner makes them; resampled to 1 mm the brain would be one voxel."""
    for part in [*MODALITIES, "seg"]:
        _rewrite(folder, part, lambda d, a: (d, np.diag([1e-4, 1e-4, 1e-4, 1.0])))
    return _expect(folder, "flair", "voxel size .* outside")


def resampling_blowup(folder, outside):
    """40 mm voxels are plausible for a header, but resampled to 1 mm the volume would not fit in memory."""
    for part in [*MODALITIES, "seg"]:
        _rewrite(folder, part, lambda d, a: (d, np.diag([40.0, 40.0, 40.0, 1.0])))
    return _expect(folder, "flair", "resampling to .* would make")


def label_outside_convention(folder, outside):
    _rewrite(folder, "seg", lambda d, a: (np.where(d == 4, 3, d).astype(np.uint8), a))
    return _expect(folder, "seg", r"label values \[3\] outside the brats convention")


def label_shape_mismatch(folder, outside):
    _rewrite(folder, "seg", lambda d, a: (d[:, :-2], a))
    return _expect(folder, "seg", "shape .* differs")


def no_tumour(folder, outside):
    _rewrite(folder, "seg", lambda d, a: (np.zeros_like(d), a))
    return None  # a healthy brain is valid training data


def dangling_symlink(folder, outside):
    path = file_of(folder, "t2")
    path.unlink()
    path.symlink_to(outside / "nothing_here.nii.gz")
    return _expect(folder, "t2", "missing file")


def symlink_into_a_data_store(folder, outside):
    """A modality that is a symlink to a (valid) file outside the dataset folder, as in a folder of links into a data
    store or a PACS export: read where it points (only a datalist's ``..`` path is refused)."""
    path = file_of(folder, "t1")
    target = outside / path.name
    outside.mkdir(exist_ok=True)
    shutil.move(path, target)
    path.symlink_to(target)
    return None


def unreadable_file(folder, outside):
    os.chmod(file_of(folder, "flair"), 0)
    return _expect(folder, "flair", "permission denied")


def folder_in_place_of_file(folder, outside):
    path = file_of(folder, "t1ce")
    path.unlink()
    path.mkdir()
    return f"case {folder.name}: missing t1ce file .*{folder.name}_t1ce.nii.gz"


CORPUS = [
    Corruption("truncated_gzip", truncated_gzip),
    Corruption("not_gzip", not_gzip),
    Corruption("corrupt_deflate_stream", corrupt_deflate_stream),
    Corruption("empty_file", empty_file),
    # inference segments a study that lacks a modality, if it has FLAIR or T1ce (see no_flair_nor_t1ce)
    Corruption("missing_modality", missing_modality, inference=False),
    Corruption("no_flair_nor_t1ce", no_flair_nor_t1ce),
    Corruption("shape_mismatch", shape_mismatch, inference=False),
    Corruption("affine_mismatch", affine_mismatch, inference=False),
    Corruption("two_d_image", two_d_image),
    Corruption("nan_voxels", nan_voxels),
    Corruption("inf_voxels", inf_voxels),
    Corruption("all_zero_study", all_zero_study),
    Corruption("huge_header", huge_header),
    Corruption("absurd_spacing", absurd_spacing),
    Corruption("tiny_spacing", tiny_spacing),
    Corruption("resampling_blowup", resampling_blowup, builder=False),
    Corruption("label_outside_convention", label_outside_convention, inference=False),
    Corruption("label_shape_mismatch", label_shape_mismatch, inference=False),
    Corruption("no_tumour", no_tumour, inference=False),
    Corruption("dangling_symlink", dangling_symlink),
    Corruption("symlink_into_a_data_store", symlink_into_a_data_store),
    Corruption("unreadable_file", unreadable_file),
    Corruption("folder_in_place_of_file", folder_in_place_of_file, inference=False),  # inference: T1ce missing
]


def case_name(corruption: Corruption) -> str:
    return f"Brats17_BAD_{corruption.name.replace('_', '')}_1"


def four_d_studies(source: Path, folder: Path) -> dict[str, str | None]:
    """4-D studies (channels last) beside one good one: the wrong number of modalities, a 4-D label, a 5-D file.

    Returns:
        ``{file name: error pattern or None}``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    volumes = [np.asanyarray(nib.load(file_of(source, m)).dataobj) for m in MODALITIES]
    affine = nib.load(file_of(source, "flair")).affine
    studies = {
        "good.nii.gz": (np.stack(volumes, -1), None),
        "three_channels.nii.gz": (np.stack(volumes[:3], -1), r"expected a 4-D image with 4 channels .* got shape"),
        "five_channels.nii.gz": (np.stack([*volumes, volumes[0]], -1), "expected a 4-D image with 4 channels"),
        "one_volume.nii.gz": (volumes[0], "expected a 4-D image with 4 channels"),
    }
    for name, (data, _) in studies.items():
        nib.save(nib.Nifti1Image(data, affine), folder / name)
    return {
        name: (f"case {name.removesuffix('.nii.gz')}: .*{name}.*{pattern}" if pattern else None)
        for name, (_, pattern) in studies.items()
    }


def dicom_two_series(folder: Path, slices: int = 6) -> Path:
    """A DICOM folder holding two series whose slices are interleaved file by file (written by SimpleITK)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for series in (1, 2):
        uid = f"1.2.826.0.1.3680043.2.1125.{series}"
        for z in range(slices):
            image = sitk.GetImageFromArray(np.full((16, 16), 100 * series + z, dtype=np.int16))
            for tag, value in (
                ("0020|000e", uid),  # SeriesInstanceUID
                ("0020|0011", str(series)),  # SeriesNumber
                ("0020|0013", str(z + 1)),  # InstanceNumber
                ("0020|0032", f"0\\0\\{z * 2.0}"),  # ImagePositionPatient
                ("0008|0060", "MR"),
            ):
                image.SetMetaData(tag, value)
            writer.SetFileName(str(folder / f"IM{2 * z + series - 1:04d}.dcm"))
            writer.Execute(image)
    return folder
