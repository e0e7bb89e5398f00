"""Checkpoints of a training: atomic writes, resume equal to an uninterrupted run, best model on
improvement."""

from types import SimpleNamespace

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler
from torch.utils.data import DataLoader

from unet_med.handlers.checkpoint import FixedNameDiskSaver, TrainingCheckpoint
from unet_med.losses import PrepareBatchWithWeight, WeightedCrossEntropyLoss


def _data():
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(4):
        image = torch.rand(1, 8, 8, generator=g)
        weight = 1 + 9 * torch.rand(1, 8, 8, generator=g)
        items.append({"image": image, "label": (image > 0.5).long(), "weight": weight})
    return items


def _trainer(out, max_epochs, resume=False):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    ckpt = TrainingCheckpoint(out, net, opt, sched, resume=resume)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=DataLoader(_data(), batch_size=2, shuffle=False),
        network=net,
        optimizer=opt,
        loss_function=WeightedCrossEntropyLoss(),
        prepare_batch=PrepareBatchWithWeight(),
        decollate=False,
        train_handlers=[LrScheduleHandler(sched, print_lr=False), ckpt],
    )
    return trainer, net, opt, sched


def test_resumed_training_equals_an_uninterrupted_one(tmp_path):
    straight, net_a, _, sched_a = _trainer(tmp_path / "a", 3)
    straight.run()

    first, _, _, _ = _trainer(tmp_path / "b", 2)
    first.run()
    saved = torch.load(tmp_path / "b" / "models" / "checkpoint_last.pt", weights_only=True)
    assert (saved["trainer"]["epoch"], saved["trainer"]["iteration"]) == (2, 4)

    resumed, net_b, opt_b, sched_b = _trainer(tmp_path / "b", 3, resume=True)
    resumed.run()
    assert (resumed.state.epoch, resumed.state.iteration) == (3, 6)
    assert sched_b.last_epoch == sched_a.last_epoch == 3
    assert opt_b.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    for a, b in zip(net_a.state_dict().values(), net_b.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    final = torch.load(tmp_path / "b" / "models" / "checkpoint_last.pt", weights_only=True)
    assert final["trainer"]["epoch"] == 3


def test_last_checkpoint_holds_every_entry_under_one_name(tmp_path):
    trainer, _, _, _ = _trainer(tmp_path, 2)
    trainer.run()
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint_last.pt", "model.pt"]
    saved = torch.load(models / "checkpoint_last.pt", weights_only=True)
    assert list(saved) == ["network", "optimizer", "lr_scheduler", "trainer", "best"]
    assert saved["trainer"] == {"epoch": 2, "iteration": 4, "epoch_length": 2, "max_epochs": 2}
    assert saved["best"] == {"metric": -float("inf"), "epoch": -1}  # no validation


def test_resume_without_checkpoint_starts_from_scratch_and_refuses_fewer_epochs(tmp_path):
    trainer, _, _, _ = _trainer(tmp_path, 1, resume=True)
    trainer.run()
    assert trainer.state.epoch == 1
    _trainer(tmp_path, 3)[0].run()
    shorter, _, _, _ = _trainer(tmp_path, 2, resume=True)
    with pytest.raises(ValueError, match="saved after epoch 3, beyond this run's 2 epochs"):
        shorter.run()


def test_atomic_save_keeps_the_previous_file_when_writing_fails(tmp_path):
    saver = FixedNameDiskSaver(tmp_path)
    path = tmp_path / "model.pt"
    saver({"w": torch.ones(3)}, path.name)

    class Unpicklable:
        def __reduce__(self):
            raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        saver({"w": torch.zeros(3), "x": Unpicklable()}, path.name)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left
    saver.remove(path.name)  # Ignite's Checkpoint calls this before re-saving a name: the file stays
    assert path.is_file()


def test_best_model_is_replaced_only_when_the_metric_improves(tmp_path):
    net = torch.nn.Linear(2, 2)
    ckpt = TrainingCheckpoint(tmp_path, net)
    for epoch, dice in ((1, 0.5), (2, 0.7), (3, 0.6)):
        with torch.no_grad():
            net.weight.fill_(epoch)
        ckpt.save_best(SimpleNamespace(state=SimpleNamespace(metrics={"val_mean_dice": dice}, epoch=epoch)))
    best = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert torch.all(best["weight"] == 2) and (ckpt.best_metric, ckpt.best_epoch) == (0.7, 2)
