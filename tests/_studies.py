"""Writes one synthetic study in the namings, formats and grids studies arrive in (test helper, not a test module).

Each writer takes the study's volumes (4, X, Y, Z) in FLAIR, T1, T1ce, T2 order and their RAS affine, and writes the
study into a new folder; the T1ce always keeps the original grid, so every layout's segmentation lands on the grid of
the truth.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import nibabel as nib
import numpy as np

CHANNELS = ("flair", "t1", "t1ce", "t2")
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


def save_itk(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Writes (X, Y, Z) with a RAS affine through ITK (NRRD, MHA), which stores it in LPS."""
    import itk

    path.parent.mkdir(parents=True, exist_ok=True)
    image = itk.image_from_array(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
    lps = LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(lps[:3, :3] / spacing)))
    itk.imwrite(image, str(path))
    return path


def brats(root: Path, name: str, images: np.ndarray, affine: np.ndarray) -> Path:
    for modality, image in zip(CHANNELS, images):
        save_nifti(root / name / f"{name}_{modality}.nii.gz", image, affine)
    return root / name


def named(folder: Path, names: dict[str, str], images: np.ndarray, affine: np.ndarray) -> Path:
    """Files ``folder/<names[modality]>`` (NIfTI, or NRRD/MHA by extension)."""
    for modality, image in zip(CHANNELS, images):
        name = names[modality]
        save = save_nifti if name.endswith((".nii", ".nii.gz")) else save_itk
        save(folder / name, image, affine)
    return folder


BIDS = {
    "flair": "sub-01_FLAIR.nii.gz",
    "t1": "sub-01_T1w.nii.gz",
    "t1ce": "sub-01_ce-gadolinium_T1w.nii.gz",
    "t2": "sub-01_T2w.nii.gz",
}
PLAIN = {"flair": "flair.nii.gz", "t1": "t1.nii.gz", "t1ce": "t1ce.nii.gz", "t2": "t2.nii.gz"}
BRATS2023 = {m: f"BraTS-GLI-00001-000-{s}.nii.gz" for m, s in zip(CHANNELS, ("t2f", "t1n", "t1c", "t2w"))}
MIXED = {
    "flair": "Patient7_FLAIR.nrrd",
    "t1": "Patient7_T1.mha",
    "t1ce": "Patient7_T1Gd.nii.gz",
    "t2": "Patient7_T2.nrrd",
}


def thick_slices(image: np.ndarray, affine: np.ndarray, factor: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The volume at ``factor`` times the slice thickness along Z (mean of each slab), and its affine."""
    z = image.shape[2] // factor * factor
    thick = image[:, :, :z].reshape(*image.shape[:2], z // factor, factor).astype(np.float32).mean(axis=3)
    out = affine.copy()
    out[:3, 2] = affine[:3, 2] * factor
    # The slab's centre: voxel (factor - 1) / 2 of the original grid.
    out[:3, 3] = affine[:3, 3] + affine[:3, 2] * (factor - 1) / 2
    return thick.astype(image.dtype), out


def flipped_to_ras(image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same volume stored with its first two axes reversed (an LPS-stored volume stored RAS, and back)."""
    flip = np.eye(4)
    out = image[::-1, ::-1, :].copy()
    for axis in (0, 1):
        flip[axis, axis] = -1
        flip[axis, 3] = image.shape[axis] - 1
    return out, affine @ flip


def mixed_grids(folder: Path, images: np.ndarray, affine: np.ndarray) -> Path:
    """Plain names; T2 at 3 mm slices, FLAIR stored with its in-plane axes reversed."""
    save_nifti(folder / "t1.nii.gz", images[1], affine)
    save_nifti(folder / "t1ce.nii.gz", images[2], affine)
    save_nifti(folder / "t2.nii.gz", *thick_slices(images[3], affine))
    save_nifti(folder / "flair.nii.gz", *flipped_to_ras(images[0], affine))
    return folder


def rigidly_moved(image: np.ndarray, affine: np.ndarray, degrees: float, shift_mm) -> np.ndarray:
    """Affine of the volume rotated by ``degrees`` about Z around its centre and shifted by ``shift_mm``: the same
    voxels now claim a different place in the world, as an unregistered scan would."""
    theta = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    centre = affine @ np.array([*(np.asarray(image.shape[:3]) - 1) / 2, 1.0])
    to_centre, back, shift = np.eye(4), np.eye(4), np.eye(4)
    to_centre[:3, 3], back[:3, 3], shift[:3, 3] = -centre[:3], centre[:3], shift_mm
    return shift @ back @ rotation @ to_centre @ affine


def dicom(
    folder: Path, images: np.ndarray, affine: np.ndarray, descriptions: dict, agent: str = "", flat: bool = False
) -> Path:
    """One sub-folder of single-frame MR slices per modality, plus a localiser series that must be ignored.

    ``flat``: every series' files in ``folder`` itself (a file set, as PACS exports are), named by slice then series
    (``IM<slice><series>``), so the series interleave.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    study_uid, frame_uid = generate_uid(), generate_uid()
    lps = LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row, column = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    series = list(zip(CHANNELS, images))
    series.append(("localiser", images[1][:, :, :1]))
    for number, (modality, image) in enumerate(series, start=1):
        series_uid = generate_uid()
        description = descriptions.get(modality, "3-plane localizer")
        out = folder if flat else folder / f"series{number:02d}"
        out.mkdir(parents=True, exist_ok=True)
        volume = np.asarray(image, dtype=np.int16)
        for k in range(volume.shape[2]):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            name = f"IM{k:04d}{number:02d}" if flat else f"{k:04d}.dcm"
            ds = FileDataset(str(out / name), {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
            ds.Modality, ds.PatientName, ds.PatientID = "MR", "Synthetic^Study", "SYN0001"
            ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber = "19700101", "O", "A0001"
            ds.ReferringPhysicianName, ds.StudyID = "", "1"
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = datetime.date(2026, 1, 1).strftime("%Y%m%d")
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
            ds.Manufacturer = "synthetic"
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            ds.SeriesNumber, ds.InstanceNumber = number, k + 1
            ds.SeriesDescription = description
            if modality == "t1ce" and agent:
                ds.ContrastBolusAgent = agent
            ds.ImageOrientationPatient = [float(v) for v in (*row, *column)]
            ds.ImagePositionPatient = [float(v) for v in lps[:3, :3] @ np.array([0, 0, k]) + lps[:3, 3]]
            ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
            ds.SliceThickness = float(spacing[2])
            ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.PixelData = np.ascontiguousarray(volume[:, :, k].T).tobytes()
            ds.save_as(out / name, enforce_file_format=True)
    del pydicom
    return folder


DICOM_DESCRIPTIONS = {"flair": "AX T2 FLAIR", "t1": "T1 MPRAGE", "t1ce": "T1 MPRAGE", "t2": "AX T2 TSE"}
