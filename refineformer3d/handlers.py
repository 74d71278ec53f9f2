"""Ignite handlers the bundle's configs attach for reliability: a batch of studies where a bad study is skipped and
named, checkpoints that are complete or absent, random states saved with a checkpoint, and a stop on non-finite loss.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.engines import IterationEvents
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.transforms import Randomizable
from monai.utils import CommonKeys

from refineformer3d.data.errors import DatasetError, InputError
from refineformer3d.data.validation import check_studies, display_path, study_files, study_name
from refineformer3d.io import partial_files, write_atomically
from refineformer3d.writers import study_name_formatter

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "BestMetricState",
    "GradScalerState",
    "RandomStates",
    "StopOnNonFiniteLoss",
    "StudyBatch",
    "WeightsOnlyCheckpointLoader",
    "checkpoint_objects",
    "cohort_part",
    "write_summary",
]

logger = logging.getLogger(__name__)


class _StudyFailed(Exception):
    """Raised from the evaluator's exception handler so that :meth:`StudyBatch.run` goes on with the next study
    (and no later exception handler, ``StatsHandler``'s, logs the traceback)."""


SUMMARY_FIELDS = ("study", "status", "reason", "seconds", "part")


def cohort_part(items: Sequence, num_parts: int, part_id: int, key=None) -> list:
    """The ``part_id``-th of ``num_parts`` shares of ``items`` once sorted by ``key``: no overlap, no padding.

    The sorted items are dealt out in turn (share ``r`` holds items ``r``, ``r + num_parts``, ...), as MONAI's
    ``partition_dataset`` deals them without shuffling; unlike it, a share may be empty (more processes than studies:
    that process has nothing to do, and still joins the summary). The shares differ in size by at most one, each holds
    studies from the whole cohort, and the sort makes them the same in every process whatever the listing order.

    Example:
        >>> cohort_part(["c", "a", "e", "b", "d"], 2, 1)
        ['b', 'd']

    Raises:
        ValueError: for ``num_parts < 1`` or a ``part_id`` outside ``0 .. num_parts - 1``.
    """
    if isinstance(num_parts, bool) or not isinstance(num_parts, int) or num_parts < 1:
        raise ValueError(f"num_parts must be a whole number of at least 1, got {num_parts!r}")
    if isinstance(part_id, bool) or not isinstance(part_id, int) or not 0 <= part_id < num_parts:
        raise ValueError(f"part_id must be one of 0 .. {num_parts - 1} (num_parts {num_parts}), got {part_id!r}")
    return sorted(items, key=key)[part_id::num_parts]


class StudyBatch:
    """The studies of one inference run: checked before the engine starts, bad ones skipped and named, and a study
    that fails while it runs skipped too, so that a cohort run never stops at one study.

    Each study is checked (see :func:`refineformer3d.data.validation.check_study`) and its outputs are looked for
    before any is processed; a study that fails, or that the listing cannot use (a modality missing or found twice), is
    logged as one line naming it and its file, and left out, so every other study is written. A study that fails
    after its checks (a file removed or unreadable, out of memory) is named the same way and the run goes on with the
    next one (:meth:`run`); outputs are written atomically, so it leaves none half-written. :meth:`finish`, the last
    step of the run, writes the cohort summary when asked and ends the run with exit status 2 listing the studies
    skipped or failed.

    A cohort is shared among processes or jobs by ``num_parts`` and ``part_id`` (:func:`cohort_part` of the study
    names); in a ``torch.distributed`` run (``multi_gpu_inference.json``) :meth:`finish` gathers every process's
    records and the first writes the summary of the whole cohort.

    Args:
        source: anything :func:`~refineformer3d.data.find_studies` takes (a dataset, a study folder or a folder of
            them, a datalist JSON, a 4-D NIfTI file or a folder of them).
        output_dir: where the segmentations go.
        pixdim: the voxel size in mm the pipeline resamples to; a study whose resampled grid would be too large is
            refused.
        overwrite: replace existing outputs; else a study whose output exists is skipped.
        write_into_input: allow ``output_dir`` to be the input folder or lie inside it.
        output_names: the files each study writes, ``{study}`` standing for its name (the segmentation, a PNG, a
            report).
        modality_files, dicom_keywords: as for :func:`~refineformer3d.data.find_studies`.
        reference_modality, coregister: as for :func:`~refineformer3d.data.check_grids`.
        output_format: as for :func:`~refineformer3d.data.grids.check_output_format`.
        num_parts, part_id: this run segments the ``part_id``-th of ``num_parts`` shares of the cohort.
        resume: the run completes an earlier one: a study whose outputs all exist is "found done", not redone and
            not an error; one with only some of them (a run killed between two of its files) is done again.
        write_summary: write ``cohort_summary.csv`` and ``.json`` in ``output_dir`` (one row per study; a job of a
            job array without ``torch.distributed`` writes ``cohort_summary_part-<part_id>-of-<num_parts>.*``).

    Raises:
        InputError: when the studies cannot be listed, none is usable, or the output folder is refused.
    """

    def __init__(
        self,
        source: str | os.PathLike,
        output_dir: str | os.PathLike,
        pixdim: Sequence[float] | None = None,
        overwrite: bool = False,
        write_into_input: bool = False,
        output_names: Sequence[str] = ("{study}_seg.nii.gz",),
        modality_files: Mapping[str, str] | None = None,
        dicom_keywords: Mapping[str, Sequence[str]] | None = None,
        reference_modality: str = "t1ce",
        coregister: bool = False,
        output_format: str = "nifti",
        num_parts: int = 1,
        part_id: int = 0,
        resume: bool = False,
        write_summary: bool = False,
    ) -> None:
        from refineformer3d.data.datalist import find_studies, load_datalist
        from refineformer3d.data.grids import check_grids, check_output_format

        flags = {"overwrite": overwrite, "write_into_input": write_into_input, "resume": resume}
        for name, flag in {**flags, "write_summary": write_summary}.items():
            if not isinstance(flag, bool):
                raise InputError.printed([f"{name} must be True or False, got {flag!r}"])
        try:
            cohort_part([], num_parts, part_id)
        except ValueError as error:
            raise InputError.printed([str(error)]) from None
        self.num_parts, self.part_id, self.write_summary = num_parts, part_id, write_summary
        source = Path(source).expanduser().absolute()
        try:
            listed: dict[str, str] = {}
            studies = find_studies(source, modality_files, dicom_keywords, skipped=listed)
            root = Path(load_datalist(source)["dataset_dir"]) if source.suffix == ".json" else source
        except DatasetError as error:
            raise InputError.printed([str(error)]) from None
        root = root if root.is_dir() else root.parent
        self.output_dir = Path(output_dir).expanduser().absolute()
        real_root = os.path.realpath(root)
        if not write_into_input and os.path.commonpath([os.path.realpath(self.output_dir), real_root]) == real_root:
            raise InputError.printed(
                [
                    f"output_dir {self.output_dir} is inside the input folder {root}; choose another output_dir "
                    "(or pass --write_into_input True)"
                ]
            )
        # The share is drawn from every listed name, usable or not, so that each process draws the same shares.
        mine = set(cohort_part([*map(study_name, studies), *listed], num_parts, part_id))
        studies = [study for study in studies if study_name(study) in mine]
        self.records: dict[str, dict] = {}
        self.skipped: dict[str, str] = {}
        for name, problem in sorted(listed.items()):
            if name in mine:
                self._skip(name, problem)
        # Files named in a modality mapping may lie anywhere: the user chose them.
        problems = check_studies(studies, root=None if modality_files else root, pixdim=pixdim, same_grid=False)
        self.studies: list[dict] = []
        partial: list[Path] = []
        for study, found in zip(studies, problems, strict=True):
            if not found:
                try:
                    check_output_format(check_grids([study], reference_modality, coregister), reference_modality,
                                        output_format)  # fmt: skip
                except DatasetError as error:
                    found = [str(error)]
            meta = {"study": study.get("case"), "filename_or_obj": study_files(study)[0]}
            subject = study_name_formatter(meta, None)["subject"]
            outputs = [self.output_dir / name.format(study=subject) for name in output_names]
            partial += partial_files(self.output_dir, [p.name for p in outputs])
            existing = [p for p in outputs if p.exists()]
            if not found and resume and not overwrite and len(existing) == len(outputs):
                self._record(study_name(study), "found done")
                continue
            if existing and not overwrite and not resume:
                found = [*found, f"case {study_name(study)}: output {existing[0]} exists (pass --overwrite True)"]
            if found:
                self._skip(study_name(study), found[0])
            else:
                self.studies.append(study)
        for path in partial:  # a kill skips write_atomically's cleanup; these are this part's own studies' files
            logger.warning(f"removed {path}, a partial file of a killed run")
            path.unlink(missing_ok=True)
        found_done = any(record["status"] == "found done" for record in self.records.values())
        if not self.studies and not found_done and num_parts == 1:
            raise InputError.printed(
                list(self.skipped.values()), f"inference: none of {len(self.skipped)} studies is usable"
            )
        self.pending: list[dict] = list(self.studies)  # what the dataset reads; run() drops studies done or failed
        self._current: int | None = None
        self._started = 0.0
        self._failed_at: int | None = None

    def _record(self, name: str, status: str, reason: str = "", seconds: float | None = None) -> None:
        self.records[name] = {
            "study": name,
            "status": status,
            "reason": reason,
            "seconds": None if seconds is None else round(seconds, 2),
            "part": self.part_id,
        }

    def _skip(self, name: str, problem: str) -> None:
        self.skipped[name] = problem
        self._record(name, "skipped", problem)
        logger.warning(f"skipped {problem}")

    def attach(self, engine: Engine) -> None:
        """Registers the failure path on ``engine``; attach it before handlers that re-raise (``StatsHandler``)."""
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._study_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._study_done)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)

    def _study_started(self, engine: Engine) -> None:
        self._study_done(engine)  # every handler of the previous study's iteration has run
        self._current = engine.state.iteration  # batches of one study, not shuffled: the index of the study
        self._started = time.monotonic()

    def _study_done(self, engine: Engine) -> None:
        if self._current is not None:
            self._record(study_name(self.pending[self._current]), "written", seconds=time.monotonic() - self._started)
            self._current = None

    def _failed(self, engine: Engine, error: BaseException) -> None:
        # Ctrl-C and a plain SystemExit stop the batch; so does a failure outside a study (the checkpoint's loading).
        if not isinstance(error, (Exception, InputError)) or self._current is None:
            raise error
        index, self._current = self._current, None
        study = self.pending[index]
        cause = error
        while cause.__cause__ is not None:  # MONAI wraps a transform's error in "applying transform ..."
            cause = cause.__cause__
        text = str(cause).strip()
        files = [f for f in study_files(study) if f in text] or study_files(study)
        reason = f"{type(cause).__name__}: {text.splitlines()[-1]}" if text else type(cause).__name__
        problem = f"case {study_name(study)}: {display_path(files[0], None)}: failed during inference ({reason})"
        logger.error(problem)
        self.skipped[study_name(study)] = problem
        self._record(study_name(study), "failed", problem, time.monotonic() - self._started)
        self._failed_at = index
        if isinstance(error, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next study starts from an empty cache, not from this one's leftovers
        raise _StudyFailed(problem) from error

    def run(self, engine: Engine) -> None:
        """Runs ``engine`` (attached to this batch, reading :attr:`pending`) over this part's studies; after a study
        fails, again over the studies after it."""
        while self.pending:
            self._failed_at = None
            engine.state.epoch_length = len(self.pending)
            try:
                engine.run()
            except _StudyFailed:
                # Ignite (0.5) keeps the generator of a run that raised, and would end the next run at once.
                engine._internal_run_generator = None
            if self._failed_at is None:
                break
            del self.pending[: self._failed_at + 1]

    def finish(self) -> None:
        """Writes the cohort summary when asked, then ends the run with exit status 2 (:class:`InputError`) when any
        study was skipped or failed. In a ``torch.distributed`` run every process takes part (it gathers the records
        of all)."""
        records = list(self.records.values())
        unrun = sum(study_name(study) not in self.records for study in self.studies)
        gathered = torch.distributed.is_available() and torch.distributed.is_initialized()
        if gathered:
            shares: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(shares, (records, unrun))
            records = [record for share, _ in shares for record in share]
            unrun = sum(count for _, count in shares)
        first = not gathered or torch.distributed.get_rank() == 0
        records.sort(key=lambda record: record["study"])
        if self.write_summary and first:
            name = "cohort_summary" if gathered or self.num_parts == 1 else (
                f"cohort_summary_part-{self.part_id}-of-{self.num_parts}")  # fmt: skip
            write_summary(records, self.output_dir, name)
        if gathered:
            torch.distributed.barrier()  # the summary is on disk before any process ends (torchrun then stops all)
        bad = [record for record in records if record["status"] in ("skipped", "failed")]
        if bad:
            counts = {status: sum(r["status"] == status for r in records) for status in ("written", "found done")}
            done = f"; {counts['found done']} found done" if counts["found done"] else ""
            names = ", ".join(record["study"] for record in bad)
            total = len(records) + unrun
            where = f"{counts['written']} of {total} studies written{done}; skipped {len(bad)} ({names})"
            raise (InputError.printed if first else InputError)([record["reason"] for record in bad], where)


def write_summary(records: Sequence[Mapping], output_dir: str | os.PathLike, name: str = "cohort_summary") -> Path:
    """Writes ``<name>.csv`` (one row per study: study, status, reason, seconds, part) and ``<name>.json`` (the rows
    and the count of each status) in ``output_dir``, each complete or absent.

    Statuses: ``written``; ``found done`` (its outputs were there: a resumed run); ``skipped`` (a check refused it
    before the run; the reason names the study and the file); ``failed`` (it failed while it ran; the same).

    Returns:
        The CSV file.
    """
    output_dir = Path(output_dir)
    counts = {status: 0 for status in ("written", "found done", "skipped", "failed")}
    for record in records:
        counts[record["status"]] += 1

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
            writer.writeheader()
            writer.writerows({k: "" if record[k] is None else record[k] for k in SUMMARY_FIELDS} for record in records)

    def write_json(tmp: str) -> None:
        Path(tmp).write_text(json.dumps({"counts": counts, "studies": list(records)}, indent=2) + "\n")

    for path in partial_files(output_dir, [f"{name}.csv", f"{name}.json"]):
        path.unlink(missing_ok=True)
    write_atomically(output_dir / f"{name}.json", write_json)
    return write_atomically(output_dir / f"{name}.csv", write_csv)


class WeightsOnlyCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (which loads with ``torch.load(..., weights_only=True)``) with a one-line error.

    A checkpoint that holds anything but tensors and plain containers (a pickled object would run code when loaded)
    is refused, as is a missing, truncated or mismatched one, with a message naming the file.
    """

    def __call__(self, engine: Engine) -> None:
        try:
            super().__call__(engine)
        except pickle.UnpicklingError as error:
            raise InputError.printed(
                [
                    f"checkpoint {self.load_path}: refused, it holds more than weights (loading it would run code): "
                    f"{str(error).strip().splitlines()[0]}"
                ]
            ) from None
        except (OSError, RuntimeError, EOFError, KeyError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
            raise InputError.printed([f"checkpoint {self.load_path}: cannot be loaded ({reason})"]) from None


class AtomicDiskSaver(BaseSaveHandler):
    """Ignite save handler that writes a checkpoint completely or not at all and keeps the previous one until then.

    Ignite's ``Checkpoint`` removes the file it replaces *before* saving the new one, and MONAI's ``CheckpointSaver``
    saves in place: a kill during the save leaves no checkpoint, or a truncated one that resume then picks. Here the
    new file is written under a temporary name and renamed (:func:`refineformer3d.io.write_atomically`), and removals
    wait until the next save has succeeded. The temporary file of a save that a kill cut short is removed when the
    next run creates its saver.

    Args:
        dirname: the checkpoint folder.
        filename: a fixed name for every save (``model.pt`` for the best model), or None for Ignite's names.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        self.dirname = Path(dirname)
        self.filename = filename
        self._pending: list[str] = []
        for path in partial_files(self.dirname):  # the hidden file of a save that a kill cut short
            logger.warning(f"removed {path}, a partial checkpoint of a killed run")
            path.unlink(missing_ok=True)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        write_atomically(self.dirname / filename, lambda tmp: torch.save(checkpoint, tmp))
        for old in self._pending:
            if old != filename:
                (self.dirname / old).unlink(missing_ok=True)
        self._pending = []

    def remove(self, filename: str) -> None:
        self._pending.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose files are written by :class:`AtomicDiskSaver`: a kill during a save leaves
    the previous checkpoint intact. Arguments are ``CheckpointSaver``'s."""

    def __init__(self, save_dir: str, *args, key_metric_filename: str | None = None, **kwargs) -> None:
        super().__init__(save_dir, *args, key_metric_filename=key_metric_filename, **kwargs)
        for checkpoint, filename in (
            (self._final_checkpoint, self._final_filename),
            (self._key_metric_checkpoint, key_metric_filename),
            (self._interval_checkpoint, None),
        ):
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(save_dir, filename)


class BestMetricState:
    """The validation's best-metric bookkeeping as a checkpoint entry, so a resumed run keeps the best model.

    MONAI's evaluator keeps ``best_metric`` and ``best_metric_epoch`` in its state, and the best-model
    ``CheckpointSaver`` keeps the score of the file it wrote; neither is in the trainer's state dict, so after a resume
    the first validation would replace a better ``model.pt``. Saved with the trainer's checkpoint, they are restored
    with it.

    Args:
        evaluator: the validation evaluator.
        handlers: its handlers; the ``CheckpointSaver`` among them that keeps the best model (``save_key_metric``) has
            its record restored too.
    """

    def __init__(self, evaluator: Engine, handlers: Sequence | None = None) -> None:
        self.evaluator = evaluator
        savers = [h for h in handlers or [] if getattr(h, "_key_metric_checkpoint", None) is not None]
        self.saver = savers[0] if savers else None

    def state_dict(self) -> dict:
        return {
            "best_metric": float(self.evaluator.state.best_metric),
            "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
            "saved": self.saver._key_metric_checkpoint.state_dict() if self.saver is not None else None,
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        if self.saver is not None and state.get("saved") is not None:
            self.saver.load_state_dict(state["saved"])


class RandomStates:
    """The random states a run draws from, as a checkpoint entry, so a resumed run draws what the first would have.

    Holds Python's, NumPy's and PyTorch's global generators and the ``R`` of every MONAI ``Randomizable`` transform
    in ``transforms`` (crops, flips, intensity changes). Its state dict is tensors and plain containers, so it loads
    with ``torch.load(..., weights_only=True)``.

    Args:
        transforms: a ``Compose`` (or any transform) whose random transforms to include.
    """

    def __init__(self, transforms=None) -> None:
        self.transforms = _randomizables(transforms) if transforms is not None else []

    def state_dict(self) -> dict:
        python = random.getstate()
        numpy_state = np.random.get_state()
        return {
            "python": [python[0], list(python[1]), python[2]],
            "numpy": _numpy_state(numpy_state),
            "torch": torch.get_rng_state(),
            "transforms": [_numpy_state(t.R.get_state()) for t in self.transforms],
        }

    def load_state_dict(self, state: Mapping) -> None:
        if len(state["transforms"]) != len(self.transforms):
            raise ValueError(
                f"checkpoint holds {len(state['transforms'])} random transform states, the pipeline has "
                f"{len(self.transforms)}; resume with the configuration that wrote it"
            )
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state(_from_numpy_state(state["numpy"]))
        torch.set_rng_state(state["torch"])
        for transform, saved in zip(self.transforms, state["transforms"], strict=True):
            transform.R.set_state(_from_numpy_state(saved))


def _randomizables(transform) -> list[Randomizable]:
    """Every ``Randomizable`` in ``transform``, nested ones included: MONAI's dictionary transforms draw from the
    ``R`` of the array transform they wrap (``RandSpatialCropd.cropper``), not their own."""
    found: dict[int, Randomizable] = {}

    def visit(value, depth: int) -> None:
        if depth > 4 or id(value) in found:
            return
        if isinstance(value, (list, tuple)):
            for item in value:
                visit(item, depth + 1)
            return
        if not isinstance(value, Randomizable) and not hasattr(value, "transforms"):
            return
        if isinstance(value, Randomizable):
            found[id(value)] = value
        for attribute in vars(value).values():
            visit(attribute, depth + 1)

    visit(transform, 0)
    return list(found.values())


def _numpy_state(state: tuple) -> dict:
    name, keys, pos, has_gauss, cached = state
    keys = torch.from_numpy(keys.astype(np.int64))
    return {"name": name, "keys": keys, "pos": int(pos), "gauss": [int(has_gauss), float(cached)]}


def _from_numpy_state(state: Mapping) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["pos"], state["gauss"][0], state["gauss"][1])


def checkpoint_objects(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    trainer: Engine,
    preprocessing,
    evaluator: Engine,
    val_handlers: Sequence | None = None,
) -> dict:
    """Everything a training checkpoint holds, so that a resumed run goes on as the first would have.

    ``train.json`` saves and loads this one dict (``train#checkpoint_saver`` and ``train#checkpoint_loader``).

    Args:
        network: the network being trained.
        optimizer: its optimizer.
        lr_scheduler: the learning-rate schedule.
        trainer: the training engine (epoch and iteration); under AMP its ``scaler`` too (:class:`GradScalerState`).
        preprocessing: the training transforms, whose random states are saved (:class:`RandomStates`).
        evaluator: the validation evaluator, whose best metric is saved (:class:`BestMetricState`).
        val_handlers: the evaluator's handlers, among them the saver of the best model.

    Returns:
        ``{"model", "optimizer", "lr_scheduler", "trainer", "random_states", "best_metric"[, "scaler"]}``.
    """
    objects = {
        "model": network,
        "optimizer": optimizer,
        "lr_scheduler": lr_scheduler,
        "trainer": trainer,
        "random_states": RandomStates(preprocessing),
        "best_metric": BestMetricState(evaluator, val_handlers),
    }
    if getattr(trainer, "amp", False):
        objects["scaler"] = GradScalerState(trainer)
    return objects


class GradScalerState:
    """The AMP gradient scaler's state (its loss scale and growth tracker) as a checkpoint entry.

    MONAI's trainer makes its ``GradScaler`` when ``run()`` starts, after the config built the checkpoint's objects,
    so the entry reads ``trainer.scaler`` when it is saved and loaded (the loader runs on ``STARTED``, once the scaler
    exists). A resumed run then starts from the scale the first had reached instead of 65536 again, which would skip
    steps while it comes down. A disabled scaler (AMP on a CPU) has an empty state: nothing to save or restore.

    Args:
        trainer: the training engine; its ``scaler`` attribute is the scaler.
    """

    def __init__(self, trainer: Engine) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict:
        scaler = getattr(self.trainer, "scaler", None)
        return scaler.state_dict() if scaler is not None else {}

    def load_state_dict(self, state: Mapping) -> None:
        scaler = getattr(self.trainer, "scaler", None)
        if state and scaler is not None and scaler.is_enabled():
            scaler.load_state_dict(dict(state))


class StopOnNonFiniteLoss:
    """Ends training at the first non-finite loss, naming the epoch, the iteration and the batch's studies.

    Checks on MONAI's ``IterationEvents.LOSS_COMPLETED``, before the backward pass and the optimiser step, so the
    weights (and any checkpoint written after) stay finite. Under AMP a ``GradScaler`` already skips a step whose
    gradients overflow; there ``max_skipped`` consecutive non-finite losses are skipped the same way (the scaler
    lowers its scale) and the run stops after that many.

    Args:
        max_skipped: consecutive non-finite losses tolerated when the trainer has a ``GradScaler`` (AMP); without one
            the first stops the run.
    """

    def __init__(self, max_skipped: int = 10) -> None:
        if max_skipped < 0:
            raise ValueError(f"max_skipped must be >= 0, got {max_skipped}")
        self.max_skipped = max_skipped
        self.skipped = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = engine.state.output[CommonKeys.LOSS]
        if torch.isfinite(loss).all():
            self.skipped = 0
            return
        scaler = getattr(engine, "scaler", None)
        where = f"epoch {engine.state.epoch}, iteration {engine.state.iteration}"
        # A scaler that is off (AMP on a CPU) steps whatever the gradients hold: only an enabled one skips.
        if scaler is not None and scaler.is_enabled() and self.skipped < self.max_skipped:
            self.skipped += 1
            engine.logger.warning(f"non-finite loss {loss.item()} at {where}; GradScaler skips this step")
            return
        batch = engine.state.batch
        files = []
        if isinstance(batch, Mapping) and CommonKeys.IMAGE in batch:
            meta = getattr(batch[CommonKeys.IMAGE], "meta", {})
            files = [str(f) for f in np.ravel(meta.get("filename_or_obj", []))]
        studies = f" (studies: {', '.join(files)})" if files else ""
        raise FloatingPointError(f"non-finite loss {loss.item()} at {where}{studies}; training stopped")
