"""The reliability handlers: checkpoints that survive a kill inside the save, a stop (or an AMP skip) at a
non-finite loss, random states and best-metric bookkeeping that travel with a checkpoint, and checkpoints loaded as
weights only."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer, Workflow
from monai.handlers import CheckpointSaver
from monai.transforms import Compose, RandFlipd, RandSpatialCropd

from refineformer3d.data import InputError
from refineformer3d.handlers import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    BestMetricState,
    RandomStates,
    StopOnNonFiniteLoss,
    WeightsOnlyCheckpointLoader,
    checkpoint_objects,
)
from refineformer3d.io import partial_files


def _save_until_killed(folder: str, saver_class, ready) -> None:
    """Trains two empty epochs, saving after each; epoch 2's save writes half a file, says so, and waits."""
    network = torch.nn.Linear(64, 64)
    save_dict = {"model": network, "optimizer": torch.optim.SGD(network.parameters(), lr=0.1)}  # as train.json's
    engine = Engine(lambda e, b: None)
    saver_class(folder, save_dict, save_interval=1, n_saved=1, epoch_level=True).attach(engine)
    save = torch.save

    def killed_midway(obj, f, *args, **kwargs):
        if engine.state.epoch == 2:
            handle = f if hasattr(f, "write") else open(f, "wb")
            handle.write(b"PK\x03\x04 half a zip archive")
            handle.flush()
            ready.send("saving")
            time.sleep(60)
        save(obj, f, *args, **kwargs)

    torch.save = killed_midway  # in the forked child only
    engine.run([0, 1], max_epochs=2)


@pytest.mark.parametrize("saver, survives", [(AtomicCheckpointSaver, True), (CheckpointSaver, False)])
def test_a_kill_inside_a_checkpoint_save_leaves_the_previous_checkpoint(tmp_path, saver, survives):
    """SIGKILL while epoch 2's checkpoint is half written: epoch 1's is intact (MONAI's own saver loses it)."""
    context = multiprocessing.get_context("fork")  # a forked child has torch imported already: no start-up cost
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_save_until_killed, args=(str(tmp_path), saver, send))
    child.start()
    try:
        assert receive.poll(120) and receive.recv() == "saving"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    saved = sorted(p.name for p in tmp_path.glob("checkpoint_epoch=*.pt"))
    if not survives:  # the control: removing before saving loses the previous checkpoint
        assert saved != ["checkpoint_epoch=1.pt"]
        return
    assert saved == ["checkpoint_epoch=1.pt"]
    state = torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)
    assert set(state) == {"model", "optimizer"}
    # The kill left the half-written file under its hidden temporary name; the next run's saver removes it.
    (partial,) = partial_files(tmp_path)
    assert partial.name.startswith(".checkpoint_epoch=2.pt.")
    AtomicCheckpointSaver(str(tmp_path), save_dict={"model": torch.nn.Linear(1, 1)}, save_interval=1)
    assert partial_files(tmp_path) == [] and (tmp_path / "checkpoint_epoch=1.pt").exists()


def _trainer(data, amp=False, scaler=None):
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 2, 3, padding=1)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
        loss_function=torch.nn.CrossEntropyLoss(),
        amp=amp,
    )
    if scaler is not None:
        trainer.scaler = scaler
    return trainer, network


def _batches(nan_at: int, count: int = 4):
    batches = []
    for i in range(count):
        image = torch.rand(1, 1, 8, 8, 8)
        if i == nan_at:
            image[0, 0, 1, 1, 1] = float("nan")
        batches.append({"image": image, "label": (torch.rand(1, 8, 8, 8) > 0.5).long()})
    return batches


def test_a_non_finite_loss_stops_training_naming_the_iteration_before_the_weights_change():
    trainer, network = _trainer(_batches(nan_at=2))
    StopOnNonFiniteLoss().attach(trainer)
    with pytest.raises(FloatingPointError, match="non-finite loss nan at epoch 1, iteration 3"):
        trainer.run()
    assert all(torch.isfinite(p).all() for p in network.parameters())


def test_under_amp_a_grad_scaler_skips_non_finite_steps_up_to_a_limit():
    trainer, network = _trainer(_batches(nan_at=1), amp=True, scaler=torch.amp.GradScaler("cpu"))
    handler = StopOnNonFiniteLoss(max_skipped=1)
    handler.attach(trainer)
    # Workflow.run: SupervisedTrainer.run would replace the scaler by a CUDA one, which is off on a CPU.
    Workflow.run(trainer)  # the scaler skipped iteration 2's step
    assert handler.skipped == 0 and trainer.state.iteration == 4
    assert all(torch.isfinite(p).all() for p in network.parameters())
    trainer, _ = _trainer(_batches(nan_at=1), amp=True, scaler=torch.amp.GradScaler("cpu"))
    StopOnNonFiniteLoss(max_skipped=0).attach(trainer)
    with pytest.raises(FloatingPointError, match="iteration 2"):
        Workflow.run(trainer)


def test_checkpoint_objects_hold_the_grad_scaler_only_when_amp_has_one():
    """train.json's checkpoint: the training state, random states and best metric; a scaler only under AMP."""
    for scaler in (None, torch.amp.GradScaler("cpu")):
        trainer, network = _trainer([], amp=scaler is not None, scaler=scaler)
        evaluator = Engine(lambda e, b: None)
        schedule = torch.optim.lr_scheduler.StepLR(trainer.optimizer, 1)
        objects = checkpoint_objects(network, trainer.optimizer, schedule, trainer, Compose([]), evaluator, [])
        keys = ["model", "optimizer", "lr_scheduler", "trainer", "random_states", "best_metric"]
        assert list(objects) == keys + (["scaler"] if scaler is not None else [])
        assert objects["model"] is network and objects["trainer"] is trainer
        assert isinstance(objects["random_states"], RandomStates)
        assert isinstance(objects["best_metric"], BestMetricState)


def test_the_grad_scaler_state_is_saved_and_restored_into_the_scaler_a_resumed_run_makes(tmp_path):
    """MONAI's trainer makes its GradScaler when run() starts, after the config built the checkpoint's objects."""
    evaluator = Engine(lambda e, b: None)
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = 0.5, 1
    trainer, network = _trainer(_batches(nan_at=-1), amp=True)
    schedule = torch.optim.lr_scheduler.StepLR(trainer.optimizer, 1)
    objects = checkpoint_objects(network, trainer.optimizer, schedule, trainer, Compose([]), evaluator, [])
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=512.0)  # what run() does, with a scale reached later
    trainer.scaler.scale(torch.ones(()))
    trainer.scaler.update(1024.0)
    trainer.state.iteration = 3
    saved = {key: value.state_dict() for key, value in objects.items()}
    AtomicDiskSaver(tmp_path, "checkpoint.pt")(saved, "checkpoint.pt")

    resumed, network = _trainer(_batches(nan_at=-1), amp=True)
    schedule = torch.optim.lr_scheduler.StepLR(resumed.optimizer, 1)
    objects = checkpoint_objects(network, resumed.optimizer, schedule, resumed, Compose([]), evaluator, [])
    resumed.scaler = torch.amp.GradScaler("cpu")  # a fresh one at 65536
    WeightsOnlyCheckpointLoader(str(tmp_path / "checkpoint.pt"), objects)(resumed)
    assert resumed.scaler.get_scale() == 1024.0 and resumed.scaler.state_dict() == trainer.scaler.state_dict()
    # A disabled scaler (AMP asked for on a CPU) saves an empty state; loaded into an enabled one, it changes nothing.
    resumed.scaler = torch.amp.GradScaler("cpu", enabled=False)
    empty = objects["scaler"].state_dict()
    assert empty == {}
    resumed.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    objects["scaler"].load_state_dict(empty)
    assert resumed.scaler.get_scale() == 256.0


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    transforms = Compose([RandSpatialCropd("image", (4, 4, 4), random_size=False), RandFlipd("image", prob=0.5)])
    transforms.set_random_state(seed=3)
    states = RandomStates(transforms)
    assert len(states.transforms) >= 3  # the Compose, two transforms and the cropper inside RandSpatialCropd
    torch.save({"random_states": states.state_dict()}, tmp_path / "c.pt")

    def draws():
        data = {"image": torch.arange(512.0).reshape(1, 8, 8, 8)}
        return [transforms(data)["image"], torch.rand(3), np.random.rand(3)]

    first = draws()
    states.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True)["random_states"])
    for a, b in zip(first, draws(), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _Pickled:
    def __reduce__(self):  # loading this would call print: code from the checkpoint
        return (print, ("ran code from a checkpoint",))


@pytest.mark.parametrize(
    "content, message",
    [
        ({"model": _Pickled()}, "refused, it holds more than weights"),
        (b"PK\x03\x04 truncated", "cannot be loaded"),
        (None, "cannot be loaded"),
    ],
    ids=["pickled_object", "truncated", "missing"],
)
def test_checkpoints_load_as_weights_only_or_are_refused_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "model.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    loader = WeightsOnlyCheckpointLoader(str(path), {"model": torch.nn.Linear(2, 2)})
    with pytest.raises(InputError, match=f"checkpoint {path}: {message}") as failure:
        loader(Engine(lambda e, b: None))
    assert "\n" not in str(failure.value)
    assert "ran code" not in capsys.readouterr().out


def _validation(folder, network, dice: float):
    """An engine that scores ``dice`` and keeps the best network as ``model.pt``, as train.json's validation does."""
    engine = Engine(lambda e, b: None)
    engine.state.best_metric, engine.state.best_metric_epoch = -1, -1
    saver = AtomicCheckpointSaver(
        str(folder), {"model": network}, save_key_metric=True, key_metric_name="dice", key_metric_filename="model.pt"
    )
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(dice=dice))
    saver.attach(engine)
    return engine, saver


@pytest.mark.parametrize("restored", [True, False])
def test_best_metric_bookkeeping_survives_a_resume(tmp_path, restored):
    network = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.constant_(network.weight, 1.0)
    engine, saver = _validation(tmp_path, network, dice=0.9)
    engine.run([0], max_epochs=1)
    engine.state.best_metric, engine.state.best_metric_epoch = 0.9, 1
    state = BestMetricState(engine, [saver]).state_dict()
    # A resumed run: new objects, worse weights and a worse score.
    torch.nn.init.constant_(network.weight, 2.0)
    engine, saver = _validation(tmp_path, network, dice=0.5)
    if restored:
        BestMetricState(engine, [saver]).load_state_dict(state)
        assert (engine.state.best_metric, engine.state.best_metric_epoch) == (0.9, 1)
    engine.run([0], max_epochs=1)
    kept = torch.load(tmp_path / "model.pt", weights_only=True)["weight"]
    assert float(kept[0, 0]) == (1.0 if restored else 2.0)  # without the record, the worse model replaces the best
