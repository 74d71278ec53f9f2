"""A self-contained copy of the bundle: what the model zoo's CI and MONAI Label load, with no install of this package.

``python -m refineformer3d.export_bundle OUT`` writes ``OUT/refineformer3d_brats_segmentation/`` and
``OUT/refineformer3d_brats_segmentation.zip``::

    refineformer3d_brats_segmentation/
        configs/            train, inference, ..., metadata (as in bundle/configs)
        docs/               README, data licence
        models/model.pt     the weights
        LICENSE
        refineformer3d/     this package's code, which the configs import

The configs import ``refineformer3d``; the package folder sits at the bundle root, so it resolves wherever the
bundle root is on ``sys.path``: the working directory for ``python -m monai.bundle`` run inside the bundle folder
(the zoo's way), the bundle path that the zoo's ``ci/verify_bundle.py`` and MONAI Label's bundle tasks put first
on ``sys.path``, and the folder MONAI's ``ConfigWorkflow.run`` adds. Only the packages in ``metadata.json``'s
``required_packages_version`` (all on PyPI) have to be installed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import uuid
from pathlib import Path

__all__ = ["BUNDLE_NAME", "export_bundle", "main"]

BUNDLE_NAME = "refineformer3d_brats_segmentation"
PACKAGE = Path(__file__).resolve().parent
# The repository's bundle folder, next to the package in a checkout or an editable install.
DEFAULT_BUNDLE = PACKAGE.parent / "bundle"
# Training outputs (checkpoint_epoch=N.pt, exports) stay behind: the zoo's bundles ship models/model.pt.
WEIGHTS = "model.pt"


def export_bundle(output_dir: str | Path, bundle_dir: str | Path = DEFAULT_BUNDLE, make_zip: bool = True) -> Path:
    """Writes the self-contained bundle folder (and its zip) under ``output_dir``.

    Both are built in a temporary folder beside them and renamed into place, so ``output_dir`` never holds a
    half-copied bundle or a truncated zip.

    Args:
        output_dir: where ``refineformer3d_brats_segmentation/`` and its ``.zip`` go (made if missing).
        bundle_dir: the source bundle: ``configs/``, ``docs/``, ``LICENSE``, ``models/model.pt``.
        make_zip: also write ``refineformer3d_brats_segmentation.zip`` (the folder at its top level, as MONAI's
            ``download``/``load`` unpack bundles).

    Returns:
        The bundle folder.

    Raises:
        FileNotFoundError: a file the bundle needs is missing from ``bundle_dir`` (named).
    """
    bundle_dir = Path(bundle_dir)
    needed = [bundle_dir / "configs" / "metadata.json", bundle_dir / "LICENSE", bundle_dir / "models" / WEIGHTS]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"cannot export the bundle: missing {', '.join(missing)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / BUNDLE_NAME
    staging = output_dir / f".{BUNDLE_NAME}.{uuid.uuid4().hex[:12]}"
    built = staging / BUNDLE_NAME
    try:
        built.mkdir(parents=True)
        for folder in ("configs", "docs"):
            shutil.copytree(bundle_dir / folder, built / folder, ignore=shutil.ignore_patterns(".*"))
        shutil.copy2(bundle_dir / "LICENSE", built / "LICENSE")
        (built / "models").mkdir()
        shutil.copy2(bundle_dir / "models" / WEIGHTS, built / "models" / WEIGHTS)
        shutil.copytree(PACKAGE, built / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if make_zip:
            # The bundle folder at the archive's top level, as MONAI's download/load unpack bundles.
            archive = shutil.make_archive(str(staging / "bundle"), "zip", staging, BUNDLE_NAME)
        if target.exists():
            shutil.rmtree(target)
        built.rename(target)
        if make_zip:
            Path(archive).replace(output_dir / f"{BUNDLE_NAME}.zip")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refineformer3d.export_bundle",
        description="Write the self-contained bundle folder and zip that the model zoo's CI and MONAI Label load.",
    )
    parser.add_argument("output_dir", type=Path, help=f"where {BUNDLE_NAME}/ and {BUNDLE_NAME}.zip are written")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="source bundle (default: %(default)s)")
    parser.add_argument("--no-zip", action="store_true", help="write the folder only")
    args = parser.parse_args(argv)
    try:
        target = export_bundle(args.output_dir, args.bundle, make_zip=not args.no_zip)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
