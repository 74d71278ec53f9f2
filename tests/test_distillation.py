"""Distillation from a frozen teacher through MONAI's SupervisedTrainer (bundle/configs/distill.json)."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS, bundle_workflow
from monai.losses import DiceCELoss

from refineformer3d.data.errors import InputError
from refineformer3d.experiments.distillation import DistillationLoss, TeacherPrepareBatch, frozen_teacher
from refineformer3d.networks import create_model


def _target(teacher_logits: torch.Tensor) -> torch.Tensor:
    label = torch.randint(0, teacher_logits.shape[1], (teacher_logits.shape[0], 1, *teacher_logits.shape[2:]))
    return torch.cat([label.float(), teacher_logits], dim=1)


def test_distillation_term_vanishes_when_the_student_matches_the_teacher():
    torch.manual_seed(0)
    base = DiceCELoss(to_onehot_y=True, softmax=True)
    loss = DistillationLoss(base, temperature=3.0, weight=1.0)
    logits = torch.randn(2, 3, 8, 8, 8)
    target = _target(logits)
    torch.testing.assert_close(loss(logits, target), base(logits, target[:, :1]))
    assert loss(-logits, target) > base(-logits, target[:, :1]) + 0.1


def test_distillation_loss_checks_its_arguments():
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(DiceCELoss(), temperature=0.0)
    with pytest.raises(ValueError, match="weight"):
        DistillationLoss(DiceCELoss(), weight=-1.0)
    with pytest.raises(ValueError, match="TeacherPrepareBatch"):
        DistillationLoss(DiceCELoss())(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4))


def test_a_teacher_checkpoint_that_does_not_fit_is_named(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(create_model("refineformer3d_tiny").state_dict(), path)
    with pytest.raises(InputError, match="other.pt"):
        frozen_teacher(create_model("refineformer3d_small"), str(path))


def test_prepare_batch_appends_the_teacher_logits():
    teacher = create_model("refineformer3d_tiny").eval().requires_grad_(False)
    batch = {"image": torch.randn(1, 4, 32, 32, 32), "label": torch.ones(1, 1, 32, 32, 32)}
    image, target = TeacherPrepareBatch(teacher)(batch, "cpu")
    assert target.shape == (1, 4, 32, 32, 32)
    torch.testing.assert_close(target[:, 1:], teacher(image))


@pytest.mark.slow
def test_distill_overlay_trains_tiny_from_frozen_small_with_deep_supervision(tmp_path, tiny_brats, shipped_weights):
    wf = bundle_workflow(
        [str(CONFIGS / "train.json"), str(CONFIGS / "distill.json")],
        tmp_path,
        tiny_brats,
        teacher_ckpt=str(shipped_weights),
        roi_size=[32, 32, 32],
        num_samples=1,
        num_workers=0,
        device="cpu",
        epochs=1,
        val_interval=2,
        **{"network_def#deep_supervision": True, "train#trainer#epoch_length": 1},
    )
    teacher = wf.parser.get_parsed_content("teacher")
    student = wf.parser.get_parsed_content("network")
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    wf.finalize()
    assert trainer.state.iteration == 1 and torch.isfinite(torch.as_tensor(trainer.state.output[0]["loss"]))
    assert isinstance(trainer.state.output[0]["pred"], list)  # deep supervision's auxiliary outputs reached the loss
    assert trainer.state.output[0]["label"].shape[0] == 4  # the label and the 3 teacher channels
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in teacher_before.items())
    assert any(not torch.equal(student.state_dict()[k], v) for k, v in student_before.items())
