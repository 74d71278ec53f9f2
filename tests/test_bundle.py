"""The bundle as users run it: ConfigWorkflow / ``python -m monai.bundle`` on tiny synthetic studies."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import CONFIGS, REPO, REQUIRED_METADATA, bundle_workflow, run_checked
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow

TRAIN = str(CONFIGS / "train.json")
EVALUATE = str(CONFIGS / "evaluate.json")
INFERENCE = str(CONFIGS / "inference.json")
REGIONS = str(CONFIGS / "regions.json")
MULTI_GPU = str(CONFIGS / "multi_gpu_train.json")
META = str(CONFIGS / "metadata.json")
MLFLOW = str(CONFIGS / "mlflow.json")
AUGMENT = str(CONFIGS / "augment.json")
PERSISTENT_CACHE = str(CONFIGS / "persistent_cache.json")
LOGGING = str(CONFIGS / "logging.conf")

# What keeps a CPU test short: the tiny variant, 32^3 crops, no worker processes.
FAST = {
    "network_def#_target_": "refineformer3d.networks.create_model",
    "network_def#name": "refineformer3d_tiny",
    "roi_size": [32, 32, 32],
    "num_samples": 1,
    "num_workers": 0,
    "sw_batch_size": 4,
    "warmup_epochs": 1,
    "device": "cpu",
    # N4 takes about 0.3 s per small study and these tests are about the workflows; test_bundle_transforms, the
    # segment and export tests run it
    "bias_correction": False,
}


def _workflow(config_file, bundle_root, dataset_dir, workflow_type="train", **override):
    return bundle_workflow(config_file, bundle_root, dataset_dir, workflow_type, **{**FAST, **override})


def _train(bundle_root, dataset_dir, epochs=1, config_file=TRAIN, **override):
    wf = _workflow(config_file, bundle_root, dataset_dir, epochs=epochs, **override)
    assert wf.check_properties() == []
    wf.run()
    metrics = dict(wf.parser.get_parsed_content("validate#evaluator").state.metrics)
    wf.finalize()
    return wf, metrics


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_brats):
    """One 2-epoch training run shared by the evaluation, inference and checkpoint tests."""
    root = tmp_path_factory.mktemp("bundle")
    wf, metrics = _train(root, tiny_brats, epochs=2)
    return root, metrics


def test_metadata_has_required_keys_and_installed_versions():
    meta = json.loads(Path(META).read_text())
    # beyond the zoo schema's required keys, the ones its bundles all carry
    for key in (*REQUIRED_METADATA, "intended_use", "data_source", "references"):
        assert key in meta, key
    import monai

    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert meta["numpy_version"] == np.__version__
    assert meta["version"] in meta["changelog"]
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == 4
    from refineformer3d.networks import RefineFormer3D

    divisor = RefineFormer3D(in_channels=4, out_channels=3).spatial_divisor
    assert image["spatial_shape"] == [f"{divisor}*n"] * 3
    # 3D Slicer names segments by these keys: they must be the label values inference writes.
    assert sorted(int(k) for k in pred["channel_def"]) == [0, 1, 2]
    assert any("SegFormer3D" in r for r in meta["references"])
    assert any("RefineFormer3D" in r for r in meta["references"])


def test_training_writes_best_model_and_resume_checkpoint(trained):
    root, metrics = trained
    assert math.isfinite(metrics["val_mean_dice"])
    for name in ("val_dice_tc", "val_dice_edema", "val_dice_wt", "val_mean_iou"):
        assert 0.0 <= metrics[name] <= 1.0, (name, metrics[name])
    # BraTS rules: HD95 in mm and finite (capped at 373 when a region is predicted nowhere), never NaN or infinite
    assert 0.0 <= metrics["val_hd95"] <= 373.0 and 0.0 <= metrics["val_hd95_wt"] <= 373.0
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    from refineformer3d.networks import create_model

    create_model("refineformer3d_tiny", in_channels=4, out_channels=3).load_state_dict(state)
    full = torch.load(root / "models" / "checkpoint_epoch=2.pt", weights_only=False)
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(full)
    assert full["trainer"]["iteration"] == 2 * full["trainer"]["epoch_length"]


def test_resume_continues_from_saved_epoch(tmp_path, tiny_brats):
    _train(tmp_path, tiny_brats, epochs=1)
    wf = _workflow(TRAIN, tmp_path, tiny_brats, epochs=2, resume=True)
    trainer = wf.parser.get_parsed_content("train#trainer")
    epochs_run = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs_run.append(e.state.epoch))
    wf.run()
    wf.finalize()
    assert epochs_run == [2], "a resumed run must start after the saved epoch, not from scratch"


def test_initial_ckpt_starts_training_from_those_weights(tmp_path, tiny_brats):
    from refineformer3d.data import InputError
    from refineformer3d.networks import create_model

    torch.manual_seed(123)
    source = create_model("refineformer3d_tiny", in_channels=4, out_channels=3).state_dict()
    # a bare float16 state dict, as bundle/models/model.pt is shipped
    torch.save({k: v.half() for k, v in source.items()}, tmp_path / "start.pt")
    wf = _workflow(TRAIN, tmp_path / "run", tiny_brats, epochs=1, initial_ckpt=str(tmp_path / "start.pt"))
    network = wf.parser.get_parsed_content("network")
    at_first_step = {}
    wf.parser.get_parsed_content("train#trainer").add_event_handler(
        Events.ITERATION_STARTED(once=1),
        lambda _: at_first_step.update({k: v.detach().clone() for k, v in network.state_dict().items()}),
    )
    wf.run()
    wf.finalize()
    assert at_first_step.keys() == source.keys()
    assert all(torch.equal(at_first_step[k], v.half().to(v.dtype)) for k, v in source.items())
    head = "decode_head.classifier.weight"
    assert not torch.equal(network.state_dict()[head], at_first_step[head]), "and trains from there"

    wf = _workflow(TRAIN, tmp_path / "run2", tiny_brats, epochs=1, initial_ckpt=str(tmp_path / "missing.pt"))
    with pytest.raises(InputError, match="missing.pt"):
        wf.run()


@pytest.mark.filterwarnings("error:Corrupt cache file")  # MONAI's word for a cached file it cannot load back
def test_persistent_cache_keeps_each_pipeline_apart(tmp_path, tiny_brats):
    cache = tmp_path / "cache"

    def read_every_study(config_file):
        wf = _workflow(config_file, tmp_path / "run", tiny_brats, cache_dir=str(cache))
        datasets = [wf.parser.get_parsed_content(f"{part}#dataset") for part in ("train", "validate")]
        for _ in range(2):  # the second pass loads what the first wrote
            items = [dataset[i] for dataset in datasets for i in range(len(dataset))]
        return datasets, items, Path(wf.parser.get_parsed_content("persistent_cache_dir"))

    (train, validate), items, folder = read_every_study([TRAIN, PERSISTENT_CACHE])
    assert folder.parent == cache and "label_scheme-classes" in folder.name and "roi_size-32x32x32" in folder.name
    # without augmentation, training caches what validation does: one file per study
    plain = {p.name for p in folder.iterdir()}
    assert len(plain) == len(train) + len(validate)
    # augment.json stops before normalising: its training studies are cached apart, validation's are reused
    read_every_study([TRAIN, AUGMENT, PERSISTENT_CACHE])
    assert {p.name for p in folder.iterdir()} > plain
    assert len(list(folder.iterdir())) == 2 * len(train) + len(validate)
    # the file names do not see the label scheme, so another scheme gets a folder of its own
    _, items, regions = read_every_study([TRAIN, REGIONS, PERSISTENT_CACHE])
    assert regions != folder and regions.parent == cache
    labels = [i["label"] for item in items for i in (item if isinstance(item, list) else [item])]
    assert all(label.shape[0] == 3 for label in labels), "TC, WT, ET channels, not the classes cache's one"


def test_evaluate_writes_segmentations_as_inference_does():
    """evaluate.json repeats inference.json's write chain (see its _desc_): the same transforms and settings, on a
    copy of the output, without the lesion post-processing; only where they read from and write to differ."""
    evaluate = json.loads(Path(EVALUATE).read_text())["eval_write_transforms"]
    inference = json.loads(Path(INFERENCE).read_text())["postprocessing"]["transforms"]
    assert evaluate[0] | {"_desc_": None} == {"_target_": "CopyItemsd", "keys": "pred", "names": "seg", "_desc_": None}
    chain = [t for t in inference if t["_target_"] != "Compose"]  # the lesion post-processing: inference's alone
    assert [t["_target_"] for t in evaluate[1:]] == [t["_target_"] for t in chain]
    where = {"keys", "transform", "output_dir", "writer", "output_ext", "savepath_in_metadict", "print_log", "_desc_"}
    for written, inferred in zip(evaluate[1:], chain, strict=True):
        assert written["keys"] == "seg" and inferred["keys"] == "pred"
        settings = [{k: v for k, v in t.items() if k not in where} for t in (written, inferred)]
        assert settings[0] == settings[1], written["_target_"]
    assert evaluate[3]["transform"] == "@validate#preprocessing" and chain[2]["transform"] == "@preprocessing"


def test_evaluate_writes_per_case_and_summary_csv(trained, tiny_brats):
    root, _ = trained
    wf = _workflow([TRAIN, EVALUATE], root, tiny_brats)
    wf.run()
    wf.finalize()
    out = root / "eval"
    with open(out / "val_mean_dice_raw.csv") as f:
        rows = list(csv.reader(f, delimiter=","))
    assert len(rows) >= 2  # a header and at least one case
    assert (out / "val_mean_dice_summary.csv").exists()
    assert (out / "metrics.csv").read_text().strip()
    # The BraTS package's table beside MONAI's, for the labelled test studies (never the model-selection split)
    brats = json.loads((out / "brats_testing.json").read_text())
    assert brats["split"] == "testing" and brats["model_selection"] is False
    assert len(brats["cases"]) == len(rows) - 1
    assert brats["cases"][0]["global_dsc_et"] is None, "the classes scheme has no enhancing tumour: n/a, not 0"
    assert 0.0 <= brats["summary"]["mean"]["global_dsc_wt"] <= 1.0
    assert (out / "brats_testing_cases.csv").exists() and (out / "brats_testing_summary.csv").exists()


def _lps_2mm_studies(tiny_brats: Path, out: Path) -> list[Path]:
    """Rewrite two unlabelled studies in LPS orientation with 1x1x2 mm voxels: one as four files, one 4-D."""
    cases = sorted(p for p in (tiny_brats / "Brats17ValidationData").iterdir() if p.is_dir())[:2]
    written = []
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    affine[:3, 3] = [40.0, 50.0, -30.0]
    for i, case in enumerate(cases):
        vols = [
            np.asanyarray(nib.load(case / f"{case.name}_{m}.nii.gz").dataobj)[:, :, ::2]
            for m in ("flair", "t1", "t1ce", "t2")
        ]
        if i == 0:
            folder = out / "Brats17ValidationData" / case.name
            folder.mkdir(parents=True)
            for m, v in zip(("flair", "t1", "t1ce", "t2"), vols):
                nib.save(nib.Nifti1Image(v, affine), folder / f"{case.name}_{m}.nii.gz")
            written.append(folder / f"{case.name}_flair.nii.gz")
        else:
            path = out / f"{case.name}.nii.gz"
            nib.save(nib.Nifti1Image(np.stack(vols, axis=-1), affine), path)
            written.append(path)
    return written


def test_inference_lands_on_the_input_grid(trained, tiny_brats, tmp_path):
    root, _ = trained
    studies = tmp_path / "studies"
    inputs = _lps_2mm_studies(tiny_brats, studies)
    before = {p: p.read_bytes() for p in studies.rglob("*.nii.gz")}
    outputs = tmp_path / "out"
    for source in (studies / "Brats17ValidationData", inputs[1]):
        wf = _workflow(INFERENCE, root, source, workflow_type="infer", output_dir=str(outputs))
        assert wf.check_properties() == []
        wf.run()
        wf.finalize()
    for inp in inputs:
        case = inp.name.replace("_flair.nii.gz", "").replace(".nii.gz", "")
        seg = nib.load(outputs / f"{case}_seg.nii.gz")
        ref = nib.load(inp)
        assert seg.shape == ref.shape[:3]
        np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-4)
        assert nib.aff2axcodes(seg.affine) == ("L", "P", "S")
        data = np.asanyarray(seg.dataobj)
        assert data.dtype == np.uint8
        # every class present (the seeded 2-epoch model finds both): a subset check would pass on an empty output
        assert set(np.unique(data)) == {0, 1, 2}
    assert {p: p.read_bytes() for p in studies.rglob("*.nii.gz")} == before, "inputs must never be modified"
    assert not list(outputs.glob(".*")), "no temporary files left behind"


def test_mlflow_run_records_params_metrics_and_best_checkpoint(tmp_path, tiny_brats):
    mlflow = pytest.importorskip("mlflow")
    wf = ConfigWorkflow(
        config_file=TRAIN,
        meta_file=META,
        logging_file=LOGGING,
        tracking=MLFLOW,
        bundle_root=str(tmp_path),
        dataset_dir=str(tiny_brats),
        epochs=1,
        **FAST,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    client = mlflow.MlflowClient(tracking_uri=wf.parser.get_parsed_content("tracking_uri"))
    experiment = client.get_experiment_by_name("refineformer3d")
    (run,) = client.search_runs([experiment.experiment_id])
    assert "val_mean_dice" in run.data.metrics and "train_loss" in run.data.metrics
    assert run.data.params["learning_rate"] and run.data.params["network"] == "RefineFormer3D"
    assert "model.pt" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_training_on_handed_over_datalists_never_builds_the_default_dataset(tmp_path, tiny_brats, monkeypatch):
    """MONAI Label's way: 4-D studies and labels as train/validate data, no dataset_dir, no synthetic cache."""
    from refineformer3d.data import synthetic, write_studies

    def refuse():
        raise AssertionError("the default dataset was built although the training data were given")

    monkeypatch.setattr(synthetic, "ensure_dataset", refuse)
    studies = tmp_path / "studies"
    write_studies(tiny_brats, studies, limit=3)
    entries = [
        {"image": str(p), "label": str(studies / "labels" / "final" / p.name)} for p in sorted(studies.glob("*.nii.gz"))
    ]
    wf = ConfigWorkflow(
        config_file=TRAIN,
        meta_file=META,
        logging_file=LOGGING,
        tracking=MLFLOW,
        bundle_root=str(tmp_path),
        epochs=1,
        **{"train#dataset#data": entries[:2], "validate#dataset#data": entries[2:]},
        **FAST,
    )
    wf.initialize()
    wf.run()
    metrics = dict(wf.parser.get_parsed_content("validate#evaluator").state.metrics)
    wf.finalize()
    assert math.isfinite(metrics["val_mean_dice"]) and (tmp_path / "models" / "model.pt").is_file()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=wf.parser.get_parsed_content("tracking_uri"))
    (run,) = client.search_runs([client.get_experiment_by_name("refineformer3d").experiment_id])
    assert run.data.params["training_data"] == str(studies) and run.data.params["num_training_cases"] == "2"


def test_regions_scheme_trains_and_writes_brats_labels(tmp_path, tiny_brats):
    _, metrics = _train(tmp_path, tiny_brats, epochs=1, config_file=[TRAIN, REGIONS])
    assert math.isfinite(metrics["val_mean_dice"]) and "val_dice_et" in metrics
    assert 0.0 <= metrics["val_hd95"] <= 373.0 and 0.0 <= metrics["val_hd95_wt"] <= 373.0
    out = tmp_path / "seg"
    # regions.json overlays training (loss, validate#); inference needs only the scheme
    wf = _workflow(
        INFERENCE,
        tmp_path,
        tiny_brats / "Brats17ValidationData",
        workflow_type="infer",
        output_dir=str(out),
        label_scheme="regions",
    )
    wf.run()
    wf.finalize()
    segs = sorted(out.glob("*_seg.nii.gz"))
    assert len(segs) == 2
    for seg in segs:
        # all four BraTS labels (the seeded model predicts every region): enhancing tumour is written as 4, not 3
        assert set(np.unique(np.asanyarray(nib.load(seg).dataobj))) == {0, 1, 2, 4}


def _cli(*args):
    return run_checked([sys.executable, "-m", "monai.bundle", *args])


def _cli_overrides(root, data):
    return [
        "--bundle_root",
        str(root),
        "--dataset_dir",
        str(data),
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--roi_size",
        "[32,32,32]",
        "--num_samples",
        "1",
        "--num_workers",
        "0",
        "--network_def#_target_",
        "refineformer3d.networks.create_model",
        "--network_def#name",
        "refineformer3d_tiny",
    ]


@pytest.mark.parametrize(
    "run_key", [["run", "training"], pytest.param(["run"], marks=pytest.mark.slow)], ids=["training", "run"]
)
def test_cli_train_command_as_documented(tmp_path, tiny_brats, run_key):
    _cli(
        *run_key,
        "--meta_file",
        META,
        "--config_file",
        TRAIN,
        "--logging_file",
        LOGGING,
        *_cli_overrides(tmp_path, tiny_brats),
    )
    assert (tmp_path / "models" / "model.pt").exists()


@pytest.mark.slow  # two processes, each importing MONAI and training
def test_ddp_two_cpu_processes_train_one_epoch(tmp_path, tiny_brats):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        f"['{TRAIN}','{MULTI_GPU}']",
        "--meta_file",
        META,
        "--logging_file",
        LOGGING,
        *_cli_overrides(tmp_path, tiny_brats),
    ]
    run_checked(cmd, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert (tmp_path / "models" / "model.pt").exists()
    assert (tmp_path / "models" / "checkpoint_epoch=1.pt").exists()


@pytest.mark.slow  # two CLI runs; test_export_bundle.py runs both commands in the exported bundle
def test_net_in_out_and_torchscript_export(tmp_path):
    _cli(
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        META,
        "--config_file",
        INFERENCE,
        "--network_def#_target_",
        "refineformer3d.networks.create_model",
        "--network_def#name",
        "refineformer3d_tiny",
        "--device",
        "cpu",
        "--p",
        "1",
        "--n",
        "1",
    )
    ckpt = tmp_path / "model.pt"
    from refineformer3d.networks import create_model

    torch.save(create_model("refineformer3d_tiny", in_channels=4, out_channels=3).state_dict(), ckpt)
    ts = tmp_path / "model.ts"
    _cli(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(ts),
        "--ckpt_file",
        str(ckpt),
        "--meta_file",
        META,
        "--config_file",
        INFERENCE,
        "--network_def#_target_",
        "refineformer3d.networks.create_model",
        "--network_def#name",
        "refineformer3d_tiny",
        "--use_trace",
        "True",
        "--input_shape",
        "[1,4,64,64,64]",
        "--key_in_ckpt",
        "",
    )
    assert ts.exists() and torch.jit.load(str(ts)) is not None


@pytest.mark.parametrize("config", [TRAIN, INFERENCE])
def test_bundle_root_is_found_from_the_repository_or_the_bundle_folder(config, tmp_path, monkeypatch):
    """The README runs the configs from the repository root, the zoo from inside the bundle folder: no --bundle_root."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config)
    monkeypatch.chdir(REPO)
    assert parser.get_parsed_content("bundle_root") == "bundle"
    parser.parse(reset=True)
    monkeypatch.chdir(tmp_path)  # a bundle folder: configs/ here, no bundle/configs/ below
    assert parser.get_parsed_content("bundle_root") == "."


@pytest.mark.parametrize("device, windows", [("cpu", 1), ("cuda:0", 2)])
def test_inference_windows_per_batch_follow_the_device(device, windows):
    """One window per batch on a CPU, where RefineFormer3D runs a whole volume faster so, two on a GPU."""
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser["device"] = f"$torch.device('{device}')"  # a torch.device is made without the device being present
    assert parser.get_parsed_content("inferer").sw_batch_size == windows


def test_shipped_regions_weights_load_into_the_inference_network(shipped_regions_weights):
    """bundle/models/model_regions.pt (TC/WT/ET sigmoid channels, float16 storage) fits inference.json's network."""
    state = torch.load(shipped_regions_weights, weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser.update({"label_scheme": "regions", "device": "cpu"})
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(state)
    assert network.decode_head.classifier.out_channels == 3


def test_studies_are_cached_by_one_thread(tmp_path):
    """MONAI's NibabelReader keeps the names of its last read on the reader that LoadImaged shares between caching
    threads; a label read in between leaves a study's four images zipped with one name: a 1-channel image. The
    README's training once failed on such a cached study, so train.json caches in one thread."""
    import nibabel as nib
    import numpy as np
    from monai.data import NibabelReader

    files = []
    for name in ("flair", "t1", "t1ce", "t2", "seg"):
        files.append(str(tmp_path / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(np.zeros((5, 6, 7), np.float32), np.eye(4)), files[-1])
    reader = NibabelReader()
    images = reader.read(files[:4])
    assert reader.get_data(images)[0].shape == (4, 5, 6, 7)  # the four sequences, channel first
    reader.read(files[4])  # another thread's label, on the same reader
    assert reader.get_data(images)[0].shape == (5, 6, 7)  # the race, step by step; gone if MONAI fixes its reader
    parser = ConfigParser()
    parser.read_config(TRAIN)
    assert parser["train#dataset#num_workers"] == parser["validate#dataset#num_workers"] == 1
