"""The inference writer: complete files or none, never over an input; outputs named after the study."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor, NibabelWriter
from monai.transforms import SaveImage

from refineformer3d.writers import AtomicNibabelWriter, output_names, study_name_formatter


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


def test_output_names_follow_the_format_and_the_extras_asked_for():
    assert output_names() == ["{study}_seg.nii.gz"]
    assert output_names("nrrd", write_png=True, write_report=True) == [
        "{study}_seg.seg.nrrd",
        "{study}_seg.png",
        "{study}_report.json",
    ]
    with pytest.raises(ValueError, match="unknown output_format"):
        output_names("png")


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


# The other output formats: 3D Slicer's .seg.nrrd and DICOM SEG, read back by ITK and highdicom.


def _label_map() -> np.ndarray:
    label = np.zeros((12, 10, 8), dtype=np.uint8)
    label[3:9, 2:8, 2:6] = 2  # edema around
    label[5:7, 4:6, 3:5] = 1  # tumour core
    label[0, 0, 0] = 1  # a corner voxel: catches flipped or transposed frames
    return label


def _save_as(output_format, output_dir, label, affine, meta):
    from refineformer3d.writers import output_extension, output_writer

    image = MetaTensor(torch.from_numpy(label)[None], affine=torch.as_tensor(affine), meta=meta)
    SaveImage(
        output_dir=output_dir,
        output_postfix="seg",
        output_ext=output_extension(output_format),
        output_dtype=np.uint8,
        separate_folder=False,
        resample=False,
        output_name_formatter=study_name_formatter,
        writer=output_writer(output_format),
        print_log=False,
    )(image)


def test_seg_nrrd_round_trip_named_coloured_segments(tmp_path):
    itk = pytest.importorskip("itk")
    from refineformer3d.labels import label_colours, label_names

    label = _label_map()
    affine = np.array([[-1.0, 0, 0, 10], [0, -1.5, 0, -5], [0, 0, 2.0, 7], [0, 0, 0, 1]])  # stored LPS, anisotropic
    _save_as("nrrd", tmp_path, label, affine, {"filename_or_obj": "x", "study": "patient7"})
    path = tmp_path / "patient7_seg.seg.nrrd"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    image = itk.imread(str(path))
    np.testing.assert_array_equal(np.transpose(itk.array_from_image(image), (2, 1, 0)), label)
    # ITK's geometry (LPS) is the RAS affine written.
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
    np.testing.assert_allclose(np.asarray(image.GetDirection()) @ np.diag(image.GetSpacing()), lps[:, :3], atol=1e-6)
    np.testing.assert_allclose(np.asarray(image.GetOrigin()), lps[:, 3], atol=1e-6)
    # The header fields 3D Slicer reads: one named, coloured segment per label value.
    header = path.read_bytes().split(b"\n\n")[0].decode()
    fields = dict(line.split(":=", 1) for line in header.splitlines() if ":=" in line)
    for i, (value, name) in enumerate(label_names().items()):
        assert fields[f"Segment{i}_Name"] == name
        assert fields[f"Segment{i}_LabelValue"] == str(value)
        assert [float(c) for c in fields[f"Segment{i}_Color"].split()] == pytest.approx(label_colours()[value])
        assert fields[f"Segment{i}_Extent"] == "0 11 0 9 0 7"
    assert fields["Segmentation_MasterRepresentation"] == "Binary labelmap"


def test_dicom_seg_round_trip_references_the_source_series(tmp_path):
    hd = pytest.importorskip("highdicom")
    pydicom = pytest.importorskip("pydicom")
    from _studies import DICOM_DESCRIPTIONS, dicom

    from refineformer3d.data import LoadStudyd, find_studies
    from refineformer3d.labels import label_names

    label = _label_map()
    affine = np.array([[-1.0, 0, 0, 10], [0, -1.0, 0, -5], [0, 0, 2.5, 7], [0, 0, 0, 1]])
    volumes = np.stack([(label + 1) * 100 + i for i in range(4)]).astype(np.int16)
    study = dicom(tmp_path / "Study1", volumes, affine, DICOM_DESCRIPTIONS, agent="Gadobutrol")
    (entry,) = find_studies(study)
    loaded = LoadStudyd("image")(entry)["image"]  # as inference loads it: the metadata the writer needs
    np.testing.assert_allclose(loaded.affine.numpy(), affine, atol=1e-4)
    _save_as("dicom-seg", tmp_path / "out", label, loaded.affine, dict(loaded.meta))
    seg = hd.seg.segread(tmp_path / "out" / "Study1_seg.dcm")
    source = [pydicom.dcmread(p) for p in sorted((study / "series03").iterdir())]  # the T1ce: the reference
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(label_names().values())
    by_position = sorted(source, key=lambda d: float(d.ImagePositionPatient[2]))
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in by_position], combine_segments=True
    )
    np.testing.assert_array_equal(np.transpose(frames, (2, 1, 0)), label)


def test_dicom_seg_needs_a_dicom_reference(tmp_path):
    with pytest.raises(RuntimeError) as caught:
        _save_as(
            "dicom-seg",
            tmp_path,
            _label_map(),
            np.eye(4),
            {
                "filename_or_obj": "t1ce.nii.gz",
                "study": "s1",
                "modality_files": {"t1ce": "t1ce.nii.gz"},
                "reference_modality": "t1ce",
            },
        )
    # SaveImage re-raises a writer's error as a RuntimeError that quotes it
    assert "study s1: DICOM SEG output needs the reference modality (t1ce) as a DICOM series" in str(caught.value)
    assert list(tmp_path.iterdir()) == []
