"""Engine pieces of the bundles: atomic checkpoints, resume equal to an uninterrupted run, best
model on improvement, weight-map batches, patch-size arithmetic."""

from types import SimpleNamespace

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler
from torch.utils.data import DataLoader

from unet_med.engines import PrepareBatchWithWeight, TrainingCheckpoint, input_patch_size, save_atomic
from unet_med.losses import WeightedCrossEntropyLoss
from unet_med.networks import create_unet


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


def test_resume_without_checkpoint_starts_from_scratch_and_refuses_fewer_epochs(tmp_path):
    trainer, _, _, _ = _trainer(tmp_path, 1, resume=True)
    trainer.run()
    assert trainer.state.epoch == 1
    _trainer(tmp_path, 3)[0].run()
    shorter, _, _, _ = _trainer(tmp_path, 2, resume=True)
    with pytest.raises(ValueError, match="saved after epoch 3, beyond this run's 2 epochs"):
        shorter.run()


def test_atomic_save_keeps_the_previous_file_when_writing_fails(tmp_path):
    path = tmp_path / "model.pt"
    save_atomic({"w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_atomic({"w": torch.zeros(3), "x": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left


def test_best_model_is_replaced_only_when_the_metric_improves(tmp_path):
    net = torch.nn.Linear(2, 2)
    ckpt = TrainingCheckpoint(tmp_path, net)
    for epoch, dice in ((1, 0.5), (2, 0.7), (3, 0.6)):
        with torch.no_grad():
            net.weight.fill_(epoch)
        ckpt.save_best(SimpleNamespace(state=SimpleNamespace(metrics={"val_mean_dice": dice}, epoch=epoch)))
    best = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert torch.all(best["weight"] == 2) and (ckpt.best_metric, ckpt.best_epoch) == (0.7, 2)


def test_batches_carry_label_and_weight_to_the_loss():
    shape = (1, 1, 4, 4)
    batch = {"image": torch.zeros(shape), "label": torch.ones(shape), "weight": torch.full(shape, 3.0)}
    image, (label, weight) = PrepareBatchWithWeight()(batch)
    assert image.shape == label.shape == weight.shape and float(weight.mean()) == 3.0
    _, target = PrepareBatchWithWeight()({"image": batch["image"], "label": batch["label"]})
    assert isinstance(target, torch.Tensor)


def test_patch_size_is_the_network_output_and_illegal_sizes_name_the_nearest_legal_ones():
    with torch.device("meta"):
        paper = create_unet("paper", base_width=2)
        cicek = create_unet("cicek3d", base_width=2)
    assert input_patch_size(paper, [388, 388]) == (572, 572)
    assert input_patch_size(cicek, [44, 44, 28]) == (132, 132, 116)
    legal = r"axis 1: 90 is not a legal output size, nearest legal 84 \(below\) and 100"
    with pytest.raises(ValueError, match=legal):
        input_patch_size(paper, [84, 90])
    with pytest.raises(ValueError, match="needs 3 sizes"):
        input_patch_size(cicek, [44, 44])
