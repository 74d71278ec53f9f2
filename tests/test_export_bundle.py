"""The exported bundle travels on its own: the model zoo's offline checks, and MONAI's commands run from inside it in
an interpreter where this package is not installed."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, REPO, REQUIRED_METADATA, run_checked

from refineformer3d.export_bundle import BUNDLE_NAME, main

# Import names whose PyPI distribution is named differently.
DISTRIBUTIONS = {"ignite": "pytorch-ignite", "torch": "torch", "brats_evaluation": "brats-evaluation"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The bundle exported, with seeded weights in place of the shipped file (no test depends on its bytes)."""
    out = tmp_path_factory.mktemp("exported")
    assert main([str(out)]) == 0
    bundle = out / BUNDLE_NAME
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


def test_layout_and_zip(exported):
    names = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
    assert {"LICENSE", "configs/metadata.json", "configs/inference.json", "models/model.pt"} <= names
    assert "refineformer3d/networks/refineformer3d.py" in names and not any("__pycache__" in n for n in names)
    with zipfile.ZipFile(exported.parent / f"{BUNDLE_NAME}.zip") as archive:
        zipped = {n for n in archive.namelist() if not n.endswith("/")}
    assert all(n.startswith(f"{BUNDLE_NAME}/") for n in zipped)
    # The zip was written before the fixture replaced the weights: same files, same names.
    assert {n.removeprefix(f"{BUNDLE_NAME}/") for n in zipped} == names
    assert not [p.name for p in exported.parent.iterdir() if p.name.startswith(".")], "no staging left behind"


def test_missing_source_files_are_named(tmp_path, capsys):
    (tmp_path / "src" / "configs").mkdir(parents=True)
    assert main([str(tmp_path / "out"), "--bundle", str(tmp_path / "src")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metadata.json" in err and "model.pt" in err
    assert not (tmp_path / "out" / BUNDLE_NAME).exists()


def test_zoo_offline_checks(exported):
    """What ci/verify_bundle.py and the zoo's pre-commit hooks check without a network or a GPU."""
    for name in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"):
        assert (exported / name).is_file(), name
    meta = json.loads((exported / "configs" / "metadata.json").read_text())
    missing = [key for key in REQUIRED_METADATA if key not in meta]
    assert not missing, f"metadata lacks {missing}"
    assert meta["version"] in meta["changelog"]
    assert all(isinstance(v, (int, float)) for v in meta["eval_metrics"].values())
    # pretty-format-json --indent=4 --no-sort-keys; end-of-file-fixer; trailing-whitespace
    for path in exported.rglob("*"):
        if path.suffix in {".json", ".md", ".conf", ".txt", ".py"} or path.name == "LICENSE":
            text = path.read_text()
            if path.suffix == ".json":
                assert text == json.dumps(json.loads(text), indent=4) + "\n", f"{path.name}: not pretty-format-json"
            assert text.endswith("\n") and not text.endswith("\n\n"), f"{path.name}: end of file"
            bad = [i + 1 for i, line in enumerate(text.splitlines()) if line != line.rstrip()]
            assert not bad, f"{path.name}: trailing whitespace on lines {bad}"


def test_metadata_lists_the_pypi_packages_the_code_imports():
    """The zoo pip-installs required_packages_version: every third-party import of the package must be there,
    pinned to the installed version, and the package itself must not (it travels inside the bundle)."""
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    required = meta["required_packages_version"]
    assert "refineformer3d" not in required
    for name, version in required.items():
        assert importlib.metadata.version(name) == version, name
    stdlib = set(sys.stdlib_module_names)
    imported = set()
    for path in (REPO / "refineformer3d").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - stdlib - {"refineformer3d", "__future__", "monai", "torch", "numpy"}
    missing = sorted(m for m in third_party if DISTRIBUTIONS.get(m, m) not in required)
    assert not missing, f"imported but not in required_packages_version: {missing}"


# Runs in the exported bundle folder under `python -S` with only site-packages on the path: the editable install
# (a .pth finder) and the repository are invisible, as in the zoo's CI or MONAI Label's environment.
DRIVER = textwrap.dedent(
    """
    import json, os, sys
    try:
        import refineformer3d
        sys.exit(f"refineformer3d is importable from outside the bundle: {refineformer3d.__file__}")
    except ModuleNotFoundError:
        pass
    sys.path.insert(0, os.getcwd())  # what ci/verify_bundle.py does with the bundle path
    import refineformer3d
    from monai.bundle import ckpt_export, create_workflow, run, verify_net_in_out

    study, output_dir = sys.argv[1:]
    meta, inference = "configs/metadata.json", "configs/inference.json"
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=inference, device="cpu", n=1)
    ckpt_export(net_id="network_def", filepath="models/verify_model.ts", ckpt_file="models/model.pt",
                meta_file=meta, config_file=inference)
    workflow = create_workflow(workflow_type="inference", config_file=inference, meta_file=meta,
                               logging_file="configs/logging.conf")
    missing = workflow.check_properties()
    # no --bundle_root: the configs find the bundle from the working directory, as zoo bundles do
    run(config_file=inference, dataset_dir=study, output_dir=output_dir, num_workers=0, write_report=True)
    print(json.dumps({"package": refineformer3d.__file__, "missing_properties": missing,
                      "bundle_root": workflow.parser.get_parsed_content("bundle_root")}))
    """
)


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH to the repository, no user site; site-packages only (read without its .pth files)."""
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR", "REFINEFORMER3D_CACHE") if k in os.environ}
    site = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    return {**keep, "PYTHONPATH": os.pathsep.join(site), "OMP_NUM_THREADS": "2"}


def test_zoo_commands_and_inference_run_from_the_bundle_alone(exported, tiny_brats, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    study = next((tiny_brats / "Brats17ValidationData").iterdir())
    out = tmp_path / "segmentations"
    proc = run_checked([sys.executable, "-S", str(driver), str(study), str(out)], cwd=exported, env=_clean_env())
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(result["package"]).resolve() == (exported / "refineformer3d" / "__init__.py").resolve()
    assert result["missing_properties"] == [] and result["bundle_root"] == "."
    assert torch.jit.load(exported / "models" / "verify_model.ts") is not None
    assert (out / f"{study.name}_seg.nii.gz").is_file() and (out / f"{study.name}_report.json").is_file()
