"""Output naming and writing for the bundle's inference: what MONAI's ``SaveImaged`` does not provide."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from monai.data import ImageWriter, ITKWriter, NibabelWriter
from monai.utils import ImageMetaKey

from refineformer3d.data.modalities import file_stem, is_dicom_series, series_files
from refineformer3d.io import write_atomically
from refineformer3d.labels import label_colours, label_names

__all__ = [
    "OUTPUT_FORMATS",
    "AtomicNibabelWriter",
    "DicomSegWriter",
    "SlicerSegmentationWriter",
    "output_extension",
    "output_names",
    "output_writer",
    "study_name_formatter",
    "write_atomically",
]

logger = logging.getLogger(__name__)

# Output format -> file extension; the writer of each is output_writer's.
OUTPUT_FORMATS = {"nifti": ".nii.gz", "nrrd": ".seg.nrrd", "dicom-seg": ".dcm"}

# The modality suffix of the first (FLAIR) file of a study, in every layout the datalist builder knows:
# BraTS 2017-2021 ``<case>_flair``, BraTS 2023+ ``<case>-t2f``, nnU-Net style ``<case>_0000``.
_MODALITY_SUFFIX = re.compile(r"([_-](flair|t2f|t1n|t1c|t2w|t1ce|t1|t2|0000))$", re.IGNORECASE)


def study_name_formatter(metadict: dict, saver) -> dict:
    """Name an output after the study, not after its first modality file.

    ``LoadImaged`` on the four files of a BraTS case records the FLAIR file as ``filename_or_obj``, so
    MONAI's default formatter would write ``<case>_flair_seg.nii.gz``; this writes ``<case>_seg.nii.gz``.
    A single 4-D file ``BRATS_001.nii.gz`` keeps its name: ``BRATS_001_seg.nii.gz``. A study loaded by
    :class:`~refineformer3d.data.LoadStudyd` carries its name as ``study`` (BIDS ``sub-01``, a DICOM study's folder),
    which wins.

    Args:
        metadict: the image's metadata, as ``SaveImage`` passes it.
        saver: the calling ``SaveImage`` (unused; part of MONAI's formatter signature).

    Returns:
        ``{"subject": ..., "idx": ...}`` for ``SaveImage``'s folder layout.
    """
    study = metadict.get("study") if metadict else None
    if isinstance(study, (list, tuple)):  # a collated batch of one
        study = study[0] if study else None
    if study:
        return {"subject": str(study), "idx": metadict.get(ImageMetaKey.PATCH_INDEX)}
    source = metadict.get(ImageMetaKey.FILENAME_OR_OBJ, "") if metadict else ""
    if isinstance(source, (list, tuple)):
        source = source[0] if source else ""
    subject = _MODALITY_SUFFIX.sub("", file_stem(source)) or "study"
    return {"subject": subject, "idx": metadict.get(ImageMetaKey.PATCH_INDEX) if metadict else None}


def _first(value):
    """One study's value of a metadata entry that a batch of one may hold as a one-item list."""
    return value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value


class _AtomicWriteMixin:
    """Writes a complete file or nothing, never over a file beside the study's inputs, and logs the final path.

    MONAI's writers write the target in place, so an interrupted run would leave a truncated file that looks like a
    result. These write to a temporary file in the same folder (same file system, so the final ``os.replace`` is
    atomic) and refuse to replace an existing file in the folder the study was read from (a BraTS case folder holds
    its label as ``<case>_seg.nii.gz``, the name inference would write).
    """

    def set_metadata(self, meta_dict=None, resample: bool = True, **options):
        self._sources = (meta_dict or {}).get(ImageMetaKey.FILENAME_OR_OBJ)
        self._meta = dict(meta_dict or {})
        super().set_metadata(meta_dict, resample=resample, **options)

    def write(self, filename, verbose: bool = True, **obj_kwargs):
        target = Path(filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        sources = getattr(self, "_sources", None)
        for source in sources if isinstance(sources, (list, tuple)) else [sources]:
            # Beside its inputs a study's output name can be an input too: BraTS keeps <case>_seg.nii.gz there.
            if source and target.exists() and Path(source).parent.exists():
                if target.parent.samefile(Path(source).parent):
                    raise ValueError(
                        f"refusing to overwrite {target}, which lies beside the study's input files; "
                        "choose another output_dir."
                    )
        # The temporary file's name is not logged: only the final path means anything to the user.
        write_atomically(target, lambda tmp: super(_AtomicWriteMixin, self).write(tmp, verbose=False, **obj_kwargs))
        if verbose:
            logger.info("wrote %s", target)


class AtomicNibabelWriter(_AtomicWriteMixin, NibabelWriter):
    """``NibabelWriter`` that writes a complete file or nothing (see ``_AtomicWriteMixin``); the NIfTI output."""


class SlicerSegmentationWriter(_AtomicWriteMixin, ITKWriter):
    """Writes a label map as a 3D Slicer segmentation, ``<study>.seg.nrrd``, with named and coloured segments.

    A ``.seg.nrrd`` is a NRRD label map whose header carries Slicer's segmentation fields (``Segment<i>_Name``,
    ``_Color``, ``_LabelValue``, ``_Layer``, ``_Extent``, ``_ID``); Slicer opens it as one segment per label value,
    and any NRRD reader (ITK, pynrrd) still reads it as a label map. Names and colours come from
    :mod:`refineformer3d.labels` for the label scheme of :attr:`scheme` (``classes`` by default; see
    :func:`output_writer` for ``regions``).
    """

    scheme = "classes"
    convention = "brats"

    def __init__(self, output_dtype=np.uint8, **kwargs):
        super().__init__(output_dtype=output_dtype, **kwargs)

    @classmethod
    def segment_fields(cls, shape) -> dict[str, str]:
        """The Slicer header fields (key -> value) of a label map of ``shape`` (X, Y, Z)."""
        names, colours = label_names(cls.scheme, cls.convention), label_colours(cls.scheme, cls.convention)
        extent = " ".join(f"0 {s - 1}" for s in shape)
        fields = {
            "Segmentation_MasterRepresentation": "Binary labelmap",
            "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
            "Segmentation_ReferenceImageExtentOffset": "0 0 0",
        }
        for i, (value, name) in enumerate(names.items()):
            fields.update(
                {
                    f"Segment{i}_ID": f"Segment_{value}",
                    f"Segment{i}_Name": name,
                    f"Segment{i}_NameAutoGenerated": "0",
                    f"Segment{i}_Color": " ".join(f"{c:g}" for c in colours[value]),
                    f"Segment{i}_ColorAutoGenerated": "0",
                    f"Segment{i}_LabelValue": str(value),
                    f"Segment{i}_Layer": "0",
                    f"Segment{i}_Extent": extent,
                    f"Segment{i}_Tags": "|",
                }
            )
        return fields

    @classmethod
    def create_backend_obj(cls, data_array, **kwargs):
        image = super().create_backend_obj(data_array, **kwargs)
        dictionary = image.GetMetaDataDictionary()
        for key, value in cls.segment_fields(tuple(image.GetLargestPossibleRegion().GetSize())).items():
            dictionary[key] = value  # NRRD writes string entries as "key:=value" header fields
        return image


class _DicomSegFile(ImageWriter):
    """Writes a label map as a DICOM Segmentation (highdicom) that references the study's source DICOM series.

    The label map must lie on the grid of the reference modality, which must have been read from a DICOM series
    (a folder, or one of its files; ``modality_files`` and ``reference_modality`` in the metadata, as
    :class:`~refineformer3d.data.LoadStudyd` records them); each of its slices becomes the frame of the source image
    at that position. Segments are the label values with names from :mod:`refineformer3d.labels` (:attr:`scheme`),
    numbered from 1 in value order.
    """

    scheme = "classes"
    convention = "brats"
    output_dtype = np.uint8

    def __init__(self, output_dtype=np.uint8, **kwargs):
        super().__init__(output_dtype=output_dtype, **kwargs)

    def set_data_array(self, data_array, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs):
        self.data_obj = self.convert_to_channel_last(data_array, channel_dim=channel_dim, squeeze_end_dims=True)
        if self.data_obj.ndim == 4:
            self.data_obj = self.data_obj[..., 0]

    def set_metadata(self, meta_dict=None, resample: bool = True, **options):
        self._meta = dict(meta_dict or {})  # never resampled: the label map must be on the source series' grid

    def source_series(self) -> Path:
        """The reference modality's DICOM series (folder or file); ``ValueError`` naming the study if there is none."""
        files = _first(self._meta.get("modality_files")) or {}
        reference = _first(self._meta.get("reference_modality"))
        study = _first(self._meta.get("study"))
        source = files.get(reference) if isinstance(files, Mapping) else None
        source = _first(source)
        if not source or not is_dicom_series(source):
            raise ValueError(
                f"study {study}: DICOM SEG output needs the reference modality ({reference}) as a DICOM series, got "
                f"{source}; choose output_format nifti or nrrd"
            )
        return Path(source)

    def write(self, filename, verbose: bool = False, **kwargs) -> None:
        import highdicom as hd
        import pydicom
        from pydicom.sr.codedict import codes

        series = self.source_series()
        sources = []
        for path in series_files(series):
            sources.append(pydicom.dcmread(path))
        first = sources[0]
        normal = np.cross(
            np.asarray(first.ImageOrientationPatient[:3], float), np.asarray(first.ImageOrientationPatient[3:], float)
        )
        # ITK reads a series in the order of slice position along the normal: slice k of the label map is the k-th.
        sources.sort(key=lambda d: float(np.asarray(d.ImagePositionPatient, float) @ normal))
        label = np.asarray(self.data_obj)
        if label.shape != (int(first.Columns), int(first.Rows), len(sources)):
            raise ValueError(
                f"label map of shape {label.shape} is not on the grid of DICOM series {series} "
                f"({first.Columns}x{first.Rows}x{len(sources)})"
            )
        names = label_names(self.scheme, self.convention)
        numbers = {value: i + 1 for i, value in enumerate(sorted(names))}
        frames = np.zeros((len(sources), int(first.Rows), int(first.Columns)), dtype=np.uint8)
        for value, number in numbers.items():
            frames[np.transpose(label, (2, 1, 0)) == value] = number
        category = codes.SCT.MorphologicallyAbnormalStructure
        algorithm = hd.AlgorithmIdentificationSequence(
            name="RefineFormer3D", version="0", family=codes.cid7162.ArtificialIntelligence
        )
        descriptions = [
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=names[value],
                segmented_property_category=category,
                segmented_property_type=codes.SCT.Edema if "edema" in names[value] else codes.SCT.Neoplasm,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
            for value, number in numbers.items()
        ]
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 1000,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="RefineFormer3D bundle",
            manufacturer_model_name="RefineFormer3D",
            software_versions="RefineFormer3D",
            device_serial_number="0",
            series_description="RefineFormer3D segmentation (research use only)",
            omit_empty_frames=False,
        )
        seg.save_as(filename)


class DicomSegWriter(_AtomicWriteMixin, _DicomSegFile):
    """DICOM SEG output, written atomically (see ``_DicomSegFile`` and ``_AtomicWriteMixin``)."""

    def write(self, filename, verbose: bool = True, **kwargs):
        self.source_series()  # fails before any file is made when the study has no DICOM reference series
        super().write(filename, verbose=verbose, **kwargs)


def _scheme_class(base: type, scheme: str, convention: str) -> type:
    return type(base.__name__, (base,), {"scheme": scheme, "convention": convention})


def output_writer(output_format: str = "nifti", scheme: str = "classes", convention: str = "brats") -> type:
    """The writer class of an output format (``nifti``, ``nrrd`` or ``dicom-seg``) for ``SaveImaged``.

    Raises:
        ValueError: for an unknown format.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output_format {output_format!r}; expected one of {sorted(OUTPUT_FORMATS)}")
    if output_format == "nifti":
        return AtomicNibabelWriter
    base = SlicerSegmentationWriter if output_format == "nrrd" else DicomSegWriter
    return _scheme_class(base, scheme, convention)


def output_extension(output_format: str = "nifti") -> str:
    """The file extension of an output format; ``ValueError`` for an unknown one."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output_format {output_format!r}; expected one of {sorted(OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[output_format]


def output_names(
    output_format: str = "nifti", write_png: bool = False, write_report: bool = False, write_brain_mask: bool = False
) -> list[str]:
    """The files inference writes per study, ``{study}`` standing for its name: the segmentation, then the PNG, the
    JSON report (see :class:`~refineformer3d.reports.StudyReportSaver`) and the brain mask when asked."""
    return (
        [f"{{study}}_seg{output_extension(output_format)}"]
        + (["{study}_seg.png"] if write_png else [])
        + (["{study}_report.json"] if write_report else [])
        + (["{study}_brain_mask.nii.gz"] if write_brain_mask else [])
    )
