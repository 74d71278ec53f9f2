"""One study's four modalities onto one grid: header geometry, the overlap check, loading and resampling.

Real studies keep each modality on its own grid (a T2 at 1x1x3 mm beside a 1 mm T1ce, a FLAIR stored LPS). Each
file is read with its own geometry by MONAI's ``LoadImage``, which picks the reader by format (nibabel for NIfTI; ITK
for DICOM series, NRRD and MetaImage), and every modality is resampled in physical (world) space onto the grid of a
reference modality, T1ce by default, as BraTS co-registers to T1ce, with MONAI's ``ResampleToMatch``. A modality on
the reference's grid already is taken as it is, so a co-registered BraTS study loads exactly as four stacked files.

Modalities that barely overlap in world space were not co-registered: :func:`check_grids` names them before any
image is read. ``coregister=True`` registers each modality rigidly onto the reference first (ITK's v4 registration,
versor rigid transform, Mattes mutual information, initialised by aligning the centres of mass). ``coregister="auto"``
(the inference default) registers each modality that is not on the reference's grid: modalities written on one grid
were co-registered by whoever wrote them (BraTS, the preprocessing toolkits), while sequences on their own matrices
come straight from the scanner, acquired minutes apart, and the head moves between them (TCGA-FG-6692's FLAIR is 13
degrees and 14 mm off its T1ce), which the headers cannot show. Sequences that barely overlap in world space are
not in one frame at all, and are still refused unless ``coregister=True``.

Skull stripping: the shipped models expect skull-stripped input, as BraTS is. :func:`skull_strip_warning` looks at
the reference modality: a skull-stripped scan is zero outside the brain, so (a) most of a BraTS-like field of view
is exactly zero and (b) the non-zero volume is about that of a brain (1.0 to 1.8 L). A study where under
:data:`MIN_ZERO_FRACTION` of the voxels are zero, or whose non-zero part exceeds :data:`MAX_BRAIN_ML`, is reported as
probably not skull-stripped (in the log and the JSON report); it is still segmented.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ITKReader, MetaTensor, NibabelReader
from monai.transforms import LoadImage, MapTransform, Orientation, ResampleToMatch
from monai.utils import ensure_tuple
from nibabel.orientations import aff2axcodes

from refineformer3d.data.errors import DatasetError, InputError
from refineformer3d.data.modalities import CHANNELS, DISPLAY, file_stem, is_dicom_file, is_dicom_series, series_files

__all__ = [
    "MAX_BRAIN_ML",
    "MIN_OVERLAP",
    "MIN_ZERO_FRACTION",
    "InputError",
    "LoadStudyd",
    "check_grids",
    "auto_bool",
    "check_output_format",
    "overlap_fraction",
    "read_geometry",
    "register_rigid",
    "skull_strip_warning",
    "study_reference",
]

logger = logging.getLogger(__name__)

MIN_OVERLAP = 0.5  # share of the reference's field of view another modality must cover in world space
MIN_ZERO_FRACTION = 0.3
MAX_BRAIN_ML = 2500.0
_SAME_GRID_MM = 1e-3  # affines that agree to this are one grid (BraTS writes its modalities' affines identically)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _itk_affine(origin, spacing, direction) -> np.ndarray:
    """The 4x4 RAS affine of an ITK (LPS) geometry."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, dtype=np.float64) @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = origin
    return _LPS_TO_RAS @ affine


def _dicom_geometry(series: Path) -> tuple[np.ndarray, tuple[int, ...]]:
    import pydicom

    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in series_files(series)]
    first = headers[0]
    rows_dir, cols_dir = (
        np.asarray(first.ImageOrientationPatient[:3], float),
        np.asarray(first.ImageOrientationPatient[3:], float),
    )
    normal = np.cross(rows_dir, cols_dir)
    positions = sorted((np.asarray(h.ImagePositionPatient, float) for h in headers), key=lambda p: float(p @ normal))
    step = (positions[-1] - positions[0]) / max(1, len(positions) - 1) if len(positions) > 1 else normal
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = rows_dir * col_spacing
    affine[:3, 1] = cols_dir * row_spacing
    affine[:3, 2] = step
    affine[:3, 3] = positions[0]
    return _LPS_TO_RAS @ affine, (int(first.Columns), int(first.Rows), len(positions))


def read_geometry(path: str | os.PathLike) -> tuple[np.ndarray, tuple[int, ...]]:
    """A file's (or DICOM series') RAS affine (4, 4) and spatial shape, from its header only.

    Raises:
        DatasetError: naming the file when its header cannot be read.
    """
    path = Path(path)
    try:
        if is_dicom_series(path):
            return _dicom_geometry(path)
        if path.name.lower().endswith((".nii", ".nii.gz")):
            import nibabel as nib

            image = nib.load(path)
            return np.asarray(image.affine, dtype=np.float64), tuple(int(s) for s in image.shape[:3])
        import itk

        io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
        if io is None:
            raise ValueError("no ITK reader for this file")
        io.SetFileName(str(path))
        io.ReadImageInformation()
        n = io.GetNumberOfDimensions()
        if n < 3:
            raise ValueError(f"{n}-D image, expected 3-D")
        direction = np.array([io.GetDirection(j) for j in range(3)], dtype=np.float64).T[:3, :3]
        affine = _itk_affine([io.GetOrigin(i) for i in range(3)], [io.GetSpacing(i) for i in range(3)], direction)
        return affine, tuple(int(io.GetDimensions(i)) for i in range(3))
    except DatasetError:
        raise
    except Exception as error:  # nibabel, ITK and pydicom raise many types for a bad header; all mean the same here
        raise DatasetError([f"cannot read the header of {path} ({type(error).__name__}: {error})"]) from None


def _same_grid(image: MetaTensor, reference: MetaTensor) -> bool:
    return image.shape[1:] == reference.shape[1:] and np.allclose(
        image.affine.numpy(), reference.affine.numpy(), atol=_SAME_GRID_MM
    )


def _world_box(affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned world box around a grid's voxels (each voxel counted to its edges)."""
    corners = np.array(np.meshgrid(*[(-0.5, s - 0.5) for s in shape], indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ corners + affine[:3, 3:4]
    return world.min(axis=1), world.max(axis=1)


def overlap_fraction(reference: tuple[np.ndarray, Sequence[int]], other: tuple[np.ndarray, Sequence[int]]) -> float:
    """Share of the reference's field of view (world box) that ``other``'s field of view covers, in [0, 1]."""
    (low_r, high_r), (low_o, high_o) = _world_box(*reference), _world_box(*other)
    common = np.clip(np.minimum(high_r, high_o) - np.maximum(low_r, low_o), 0, None)
    return float(np.prod(common) / max(np.prod(high_r - low_r), 1e-12))


def _reference_index(reference_modality: str) -> int:
    if reference_modality not in CHANNELS:
        raise ValueError(f"reference_modality must be one of {list(CHANNELS)}, got {reference_modality!r}")
    return CHANNELS.index(reference_modality)


# The grid a study lacking the chosen reference is written on: T1ce as BraTS co-registers to it, then FLAIR (often the
# other 3-D acquisition), then T2 and T1.
_FALLBACK_REFERENCES = ("t1ce", "flair", "t2", "t1")


def study_reference(files: Sequence[str | None], reference_modality: str = "t1ce") -> str:
    """The modality whose grid a study of ``files`` (``None`` for a missing one, in :data:`CHANNELS` order) is
    resampled onto: ``reference_modality`` when the study has it, else the first it has of T1ce, FLAIR, T2, T1.

    Raises:
        ValueError: for an unknown reference modality or a study without files.
    """
    _reference_index(reference_modality)
    present = [m for m, f in zip(CHANNELS, files) if f is not None]
    found = next((m for m in (reference_modality, *_FALLBACK_REFERENCES) if m in present), None)
    if found is None:
        raise ValueError(f"a study without any of {list(CHANNELS)} has no reference grid")
    return found


def check_grids(studies: list[dict], reference_modality: str = "t1ce", coregister: bool | str = False) -> list[dict]:
    """Checks, from the headers, that each study's modalities overlap the reference modality in world space.

    Args:
        studies: entries ``{"image": [flair, t1, t1ce, t2] or one file, "case": name}`` (single 4-D files pass).
        reference_modality: the modality whose grid the others are resampled onto (see :func:`study_reference`
            for a study that lacks it).
        coregister: ``True``: the modalities will be registered from wherever they are, so only a header that cannot
            be read is a problem. ``"auto"`` registers the residual head motion between sequences that the headers
            place in one frame, so a modality that barely overlaps the reference is a problem as with ``False``.

    Returns:
        ``studies``, unchanged.

    Raises:
        DatasetError: one line per study naming each modality, its file and how much of the reference's field of
            view it covers, when below :data:`MIN_OVERLAP`.
    """
    _reference_index(reference_modality)
    coregister = auto_bool(coregister, "coregister")
    problems = []
    for study in studies:
        files = study["image"]
        if isinstance(files, (str, os.PathLike)) or len(files) != len(CHANNELS):
            continue
        used = study_reference(files, reference_modality)
        index = CHANNELS.index(used)
        reference = read_geometry(files[index])
        for modality, path in zip(CHANNELS, files):
            if path is None or path == files[index]:
                continue
            covered = overlap_fraction(reference, read_geometry(path))
            if covered < MIN_OVERLAP and coregister is not True:
                problems.append(
                    f"study {study['case']}: {DISPLAY[modality]} {Path(path).name} covers {covered:.0%} of the "
                    f"{DISPLAY[used]} field of view ({Path(files[index]).name}) in world space; the "
                    "modalities are not co-registered (register them, or run with coregister True)"
                )
    if problems:
        raise DatasetError(problems)
    return studies


def check_output_format(
    studies: list[dict], reference_modality: str = "t1ce", output_format: str = "nifti"
) -> list[dict]:
    """Checks that each study can be written in ``output_format``: a DICOM SEG references the reference modality's
    DICOM series, so ``"dicom-seg"`` needs one.

    Returns:
        ``studies``, unchanged.

    Raises:
        DatasetError: one line per study that cannot.
    """
    if output_format != "dicom-seg":
        return studies
    _reference_index(reference_modality)
    problems = []
    for study in studies:
        modality = (
            reference_modality
            if isinstance(study["image"], str)
            else study_reference(study["image"], reference_modality)
        )
        reference = study["image"] if isinstance(study["image"], str) else study["image"][CHANNELS.index(modality)]
        if not is_dicom_series(reference):
            problems.append(
                f"study {study['case']}: DICOM SEG output needs the {DISPLAY[modality]} as a DICOM series folder or "
                f"file, got {reference}; choose output_format nifti or nrrd"
            )
    if problems:
        raise DatasetError(problems)
    return studies


def skull_strip_warning(image: torch.Tensor | np.ndarray, affine: np.ndarray) -> str:
    """An empty string for a scan that looks skull-stripped, else the reason it does not (see the module's notes)."""
    values = np.asarray(image)
    zero = float(np.mean(values == 0))
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
    nonzero_ml = float(np.count_nonzero(values)) * voxel_ml
    if zero < MIN_ZERO_FRACTION or nonzero_ml > MAX_BRAIN_ML:
        return (
            f"looks not skull-stripped ({zero:.0%} of voxels are zero, {nonzero_ml:.0f} mL non-zero; a stripped brain "
            f"is under {MAX_BRAIN_ML:.0f} mL with at least {MIN_ZERO_FRACTION:.0%} zeros): the model expects "
            "skull-stripped input and its mask may be meaningless"
        )
    return ""


def auto_bool(value: bool | str, name: str) -> bool | str:
    """``"auto"``, ``True`` or ``False`` from a config or command-line value (``"true"``/``"false"`` strings too),
    for the options that are on, off or decided per study.

    Raises:
        ValueError: naming the option, for anything else.
    """
    if isinstance(value, str) and value.lower() in ("auto", "true", "false"):
        return {"auto": "auto", "true": True, "false": False}[value.lower()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{name} must be auto, true or false, got {value!r}")


def register_rigid(fixed: MetaTensor, moving: MetaTensor, iterations: int = 200, return_transform: bool = False):
    """``moving`` rigidly registered onto ``fixed`` and resampled onto its grid (1, X, Y, Z); with
    ``return_transform`` also ITK's transform (fixed's LPS world to moving's), to map other images of ``moving``'s
    space the same way.

    ITK's ``ImageRegistrationMethodv4`` with a ``VersorRigid3DTransform`` (rotation and translation), Mattes mutual
    information (the modalities differ in contrast) and a centre-of-mass initialisation, coarse to fine.
    """
    import itk
    from monai.data.itk_torch_bridge import itk_image_to_metatensor, metatensor_to_itk_image

    image_type = itk.Image[itk.F, 3]
    fixed_itk = metatensor_to_itk_image(fixed, channel_dim=0, dtype=np.float32)
    moving_itk = metatensor_to_itk_image(moving, channel_dim=0, dtype=np.float32)
    transform = itk.VersorRigid3DTransform[itk.D].New()
    initializer = itk.CenteredTransformInitializer[type(transform), image_type, image_type].New(
        Transform=transform, FixedImage=fixed_itk, MovingImage=moving_itk
    )
    initializer.MomentsOn()
    initializer.InitializeTransform()
    metric = itk.MattesMutualInformationImageToImageMetricv4[image_type, image_type].New(NumberOfHistogramBins=32)
    scales = itk.RegistrationParameterScalesFromPhysicalShift[
        itk.MattesMutualInformationImageToImageMetricv4[image_type, image_type]
    ].New(Metric=metric)
    optimizer = itk.RegularStepGradientDescentOptimizerv4[itk.D].New(
        LearningRate=1.0,
        MinimumStepLength=1e-3,
        NumberOfIterations=iterations,
        RelaxationFactor=0.7,
        ScalesEstimator=scales,
    )
    registration = itk.ImageRegistrationMethodv4[image_type, image_type].New(
        FixedImage=fixed_itk,
        MovingImage=moving_itk,
        Metric=metric,
        Optimizer=optimizer,
        InitialTransform=transform,
        InPlace=True,
    )
    registration.SetMetricSamplingStrategy(itk.ImageRegistrationMethodv4Enums.MetricSamplingStrategy_RANDOM)
    registration.SetMetricSamplingPercentage(0.2)
    registration.SetNumberOfLevels(3)
    registration.SetShrinkFactorsPerLevel([4, 2, 1])
    registration.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    registration.MetricSamplingReinitializeSeed(0)
    registration.Update()
    resampled = itk.resample_image_filter(
        moving_itk,
        transform=registration.GetTransform(),
        use_reference_image=True,
        reference_image=fixed_itk,
        default_pixel_value=0.0,
    )
    out = itk_image_to_metatensor(resampled, channel_dim=None, dtype=torch.float32)
    registered = MetaTensor(out.as_tensor().reshape(fixed.shape), meta=dict(fixed.meta))
    return (registered, registration.GetTransform()) if return_transform else registered


class DicomFileSeriesReader(ITKReader):
    """MONAI's ``ITKReader`` that reads a DICOM file as the whole series it belongs to.

    A series in a file set (a flat folder of several series) is named by one of its files; ITK's
    ``GDCMSeriesFileNames`` splits the folder by SeriesInstanceUID and gives that series' files in slice order.
    Folders and other files are read as ``ITKReader`` reads them.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._file_sets: dict[tuple[str, int], list[list[str]]] = {}

    def _series_of_folder(self, folder: Path) -> list[list[str]]:
        """Each series' files in ``folder``, in slice order; ITK parses every header, so once per folder state."""
        import itk

        key = (str(folder), folder.stat().st_mtime_ns)
        if key not in self._file_sets:
            names = itk.GDCMSeriesFileNames.New()
            names.SetUseSeriesDetails(False)  # one series per SeriesInstanceUID, as discovery splits them
            names.SetDirectory(str(folder))
            self._file_sets = {key: [[str(f) for f in names.GetFileNames(uid)] for uid in names.GetSeriesUIDs()]}
        return self._file_sets[key]

    def read(self, data, **kwargs):
        names = ensure_tuple(data)  # LoadImage passes a tuple of names
        if len(names) == 1 and not Path(names[0]).is_dir() and is_dicom_file(names[0]):
            import itk

            for files in self._series_of_folder(Path(names[0]).parent):
                if any(os.path.samefile(f, names[0]) for f in files):
                    return itk.imread(files if len(files) > 1 else files[0], **{**self.kwargs, **kwargs})
        return super().read(data, **kwargs)


class LoadStudyd(MapTransform):
    """Loads a study of four modality files onto the reference modality's grid, (4, X, Y, Z) float32.

    Each file keeps its own geometry when read (``LoadImage`` chooses nibabel or ITK by format); every modality not
    on the reference's grid already is resampled onto it in world space (bilinear), or registered onto it first with
    ``coregister`` (``"auto"``: those not on its grid). The result carries the reference's affine, so inference
    writes its segmentation on that grid. A single file (a 4-D study) is loaded as ``LoadImaged`` with
    ``EnsureChannelFirstd`` would.

    A study may lack modalities (``None`` in place of the file): only the others are loaded, in order, and the result
    has one channel less per missing modality; :class:`~refineformer3d.data.transforms.FillMissingSequencesd` puts
    them back. A study lacking the reference modality is written on another's grid (:func:`study_reference`).

    Metadata added for the report and writers: ``study`` (the entry's ``case``), ``modality_files`` (modality ->
    file, for the modalities the study has), ``missing_sequences`` (the modalities it lacks, in :data:`CHANNELS`
    order), ``reference_modality`` (the one whose grid it is on) and ``skull_strip_warning``.

    Args:
        keys: the image key; its value is four paths (or ``None``) in FLAIR, T1, T1ce, T2 order, or one path.
        reference_modality: ``"t1ce"`` (default), ``"flair"``, ``"t1"`` or ``"t2"``.
        coregister: rigidly register each modality onto the reference before resampling: ``True``, ``False`` or
            ``"auto"`` (each modality not on the reference's grid; see the module's notes).
        mode: interpolation of the resampling.
        case_key: the entry's study name.
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: for an unknown reference modality; when called, for a list that is not four files.
    """

    def __init__(
        self,
        keys: KeysCollection,
        reference_modality: str = "t1ce",
        coregister: bool | str = False,
        mode: str = "bilinear",
        case_key: str = "case",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reference = _reference_index(reference_modality)
        self.reference_modality = reference_modality
        self.coregister = auto_bool(coregister, "coregister")
        self.case_key = case_key
        # Chosen by format among these two (the last that can read a file wins: nibabel for NIfTI, ITK for DICOM
        # series (a folder or one of its files), NRRD and MetaImage); naming them keeps MONAI from also trying its
        # pydicom readers.
        with warnings.catch_warnings():
            # LoadImage also builds MONAI's GPU DICOM reader whenever pydicom is installed, which warns on every
            # machine without nvImageCodec; DICOM series are read by ITK here.
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
            self.loader = LoadImage(
                reader=[DicomFileSeriesReader(), NibabelReader()],
                image_only=True,
                ensure_channel_first=True,
                dtype=np.float32,
            )
        self.resample = ResampleToMatch(mode=mode, padding_mode="zeros")
        # Its axis codes are set to the reference's per study; labels as nibabel's aff2axcodes names them.
        self.orient = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.load(d[key], d.get(self.case_key))
        return d

    def load(self, source, study: str | None = None) -> MetaTensor:
        """Loads one study (see the class); ``study`` names it in the metadata and the log."""
        if isinstance(source, (str, os.PathLike)):
            return self.loader(source)
        given = [f and str(f) for f in source]
        if len(given) != len(CHANNELS):
            raise ValueError(f"study {study}: expected {len(CHANNELS)} files (FLAIR, T1, T1ce, T2), got {len(given)}")
        reference_modality = study_reference(given, self.reference_modality)
        present = [m for m, f in zip(CHANNELS, given) if f is not None]
        files = [f for f in given if f is not None]
        images = [self.loader(f) for f in files]
        reference = images[present.index(reference_modality)]
        self.orient.axcodes = "".join(aff2axcodes(reference.affine.numpy()))
        channels = []
        for modality, image in zip(present, images):
            if not _same_grid(image, reference):
                # Stored with other axis order or directions (a sagittal T1ce beside axial scans, an LPS FLAIR)
                # but on the same voxels: reoriented exactly. Interpolating would leave 1e-12 residues in the zero
                # background, which the crop and the non-zero normalisation take for brain.
                oriented = self.orient(image)
                image = oriented if _same_grid(oriented, reference) else image
            register = image is not reference and (
                self.coregister is True or (self.coregister == "auto" and not _same_grid(image, reference))
            )
            if register or not _same_grid(image, reference):
                if register:
                    logger.info(
                        "study %s: registering %s onto %s", study, DISPLAY[modality], DISPLAY[reference_modality]
                    )
                    image = register_rigid(reference, image)
                else:
                    image = self.resample(image, reference)
            channels.append(image.as_tensor())
        meta = dict(reference.meta)
        name = study or file_stem(files[0])
        meta["filename_or_obj"] = files[0]
        meta["study"] = name
        meta["modality_files"] = dict(zip(present, files))
        meta["missing_sequences"] = [m for m in CHANNELS if m not in present]
        meta["reference_modality"] = reference_modality
        if reference_modality != self.reference_modality:
            logger.warning(
                "study %s: no %s; written on the %s grid",
                name,
                DISPLAY[self.reference_modality],
                DISPLAY[reference_modality],
            )
        # Logged by SkullStripd, which strips such a study unless told not to.
        meta["skull_strip_warning"] = skull_strip_warning(reference.as_tensor()[0].numpy(), reference.affine.numpy())
        return MetaTensor(torch.cat(channels, dim=0), meta=meta)
