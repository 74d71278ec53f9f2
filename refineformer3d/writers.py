"""Output naming and writing for the bundle's inference: what MONAI's ``SaveImaged`` does not provide."""

from __future__ import annotations

import os
import re
from pathlib import Path

from monai.data import NibabelWriter
from monai.utils import ImageMetaKey

from refineformer3d.io import write_atomically

__all__ = ["AtomicNibabelWriter", "study_name_formatter", "write_atomically"]

# The modality suffix of the first (FLAIR) file of a study, in every layout the datalist builder knows:
# BraTS 2017-2021 ``<case>_flair``, BraTS 2023+ ``<case>-t2f``, nnU-Net style ``<case>_0000``.
_MODALITY_SUFFIX = re.compile(r"([_-](flair|t2f|t1n|t1c|t2w|t1ce|t1|t2|0000))$", re.IGNORECASE)


def _stem(path: str) -> str:
    name = os.path.basename(str(path))
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def study_name_formatter(metadict: dict, saver) -> dict:
    """Name an output after the study, not after its first modality file.

    ``LoadImaged`` on the four files of a BraTS case records the FLAIR file as ``filename_or_obj``, so
    MONAI's default formatter would write ``<case>_flair_seg.nii.gz``; this writes ``<case>_seg.nii.gz``.
    A single 4-D file ``BRATS_001.nii.gz`` keeps its name: ``BRATS_001_seg.nii.gz``.

    Args:
        metadict: the image's metadata, as ``SaveImage`` passes it.
        saver: the calling ``SaveImage`` (unused; part of MONAI's formatter signature).

    Returns:
        ``{"subject": ..., "idx": ...}`` for ``SaveImage``'s folder layout.
    """
    source = metadict.get(ImageMetaKey.FILENAME_OR_OBJ, "") if metadict else ""
    if isinstance(source, (list, tuple)):
        source = source[0] if source else ""
    subject = _MODALITY_SUFFIX.sub("", _stem(source)) or "study"
    return {"subject": subject, "idx": metadict.get(ImageMetaKey.PATCH_INDEX) if metadict else None}


class AtomicNibabelWriter(NibabelWriter):
    """``NibabelWriter`` that writes a complete file or nothing.

    nibabel writes the target in place, so an interrupted run would leave a truncated ``.nii.gz`` that
    looks like a result. This writer saves to a temporary file in the same folder (same file system, so
    the final ``os.replace`` is atomic), and refuses to replace an existing file in the folder the study was read
    from (a BraTS case folder holds its label as ``<case>_seg.nii.gz``, the name inference would write).
    """

    def set_metadata(self, meta_dict=None, resample: bool = True, **options):
        self._sources = (meta_dict or {}).get(ImageMetaKey.FILENAME_OR_OBJ)
        super().set_metadata(meta_dict, resample=resample, **options)

    def write(self, filename, verbose: bool = False, **obj_kwargs):
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
        write_atomically(target, lambda tmp: super(AtomicNibabelWriter, self).write(tmp, verbose=verbose, **obj_kwargs))
