"""The paper's weighted softmax cross-entropy, the valid-conv Dice + CE, and the batches that carry
the weight map to the loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from unet_med.losses import PrepareBatchWithWeight, ValidDiceCELoss, WeightedCrossEntropyLoss, center_crop_to


def test_unit_weights_equal_plain_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    label = torch.randint(0, 3, (2, 1, 8, 8))
    loss = WeightedCrossEntropyLoss()
    expected = F.cross_entropy(logits, label[:, 0])
    assert torch.allclose(loss(logits, label, torch.ones(2, 1, 8, 8)), expected)
    assert torch.allclose(loss(logits, label), expected)
    assert torch.allclose(loss(logits, (label, torch.ones(2, 1, 8, 8))), expected)


def test_weight_map_is_a_weighted_mean_of_per_pixel_losses():
    torch.manual_seed(1)
    logits = torch.randn(1, 2, 4, 4)
    label = torch.randint(0, 2, (1, 1, 4, 4))
    weight = torch.rand(1, 1, 4, 4) * 10
    per_pixel = -torch.log_softmax(logits, 1).gather(1, label)
    expected = (per_pixel * weight).sum() / weight.sum()
    assert torch.allclose(WeightedCrossEntropyLoss()(logits, label, weight), expected)
    expected_voxels = (per_pixel * weight).sum() / 16
    assert torch.allclose(WeightedCrossEntropyLoss("voxels")(logits, label, weight), expected_voxels)


def test_zero_weight_pixels_do_not_count():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, 0] = 100.0  # confidently wrong on pixel (0, 0)
    label = torch.zeros(1, 1, 2, 2, dtype=torch.long)
    weight = torch.ones(1, 1, 2, 2)
    weight[0, 0, 0, 0] = 0
    assert WeightedCrossEntropyLoss()(logits, label, weight).item() == pytest.approx(math.log(2), rel=1e-5)


def test_border_weight_raises_the_loss_where_the_weight_is_large():
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 1, 0, 0] = 5.0  # wrong on pixel 0, right (log 2) on pixel 1
    label = torch.zeros(1, 1, 1, 2, dtype=torch.long)
    low = WeightedCrossEntropyLoss()(logits, label, torch.tensor([[[[1.0, 10.0]]]]))
    high = WeightedCrossEntropyLoss()(logits, label, torch.tensor([[[[10.0, 1.0]]]]))
    assert high > low


def test_larger_label_and_weight_are_centre_cropped_to_a_valid_output_and_3d_works():
    torch.manual_seed(2)
    logits = torch.randn(1, 2, 4, 4, 2, requires_grad=True)
    label = torch.randint(0, 2, (1, 1, 8, 8, 6))
    weight = torch.rand(1, 1, 8, 8, 6)
    loss = WeightedCrossEntropyLoss()(logits, label, weight)
    centre = (slice(None), slice(None), slice(2, 6), slice(2, 6), slice(2, 4))
    assert torch.allclose(loss, WeightedCrossEntropyLoss()(logits, label[centre], weight[centre]))
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_uncentred_or_too_small_label_is_refused():
    with pytest.raises(ValueError, match="axis 0: 7 vs 4"):
        center_crop_to(torch.zeros(1, 1, 7, 8), (4, 4))
    with pytest.raises(ValueError, match="at least as large"):
        WeightedCrossEntropyLoss()(torch.zeros(1, 2, 8, 8), torch.zeros(1, 1, 4, 4))


def test_dice_ce_crops_label_and_prefers_correct_predictions():
    label = torch.zeros(1, 1, 6, 6, 6, dtype=torch.long)
    label[..., 2:4, 2:4, 2:4] = 1
    good = torch.full((1, 2, 2, 2, 2), -5.0)
    good[:, 1] = 5.0  # the centre 2^3 block is all foreground
    bad = -good
    loss = ValidDiceCELoss()
    assert loss(good, label) < loss(bad, label)
    # the centre crop is what is compared: the same logits against the uncropped centre agree
    assert torch.allclose(loss(good, label), loss(good, label[..., 2:4, 2:4, 2:4]))


def test_batches_carry_label_and_weight_to_the_loss():
    shape = (1, 1, 4, 4)
    batch = {"image": torch.zeros(shape), "label": torch.ones(shape), "weight": torch.full(shape, 3.0)}
    image, (label, weight) = PrepareBatchWithWeight()(batch)
    assert image.shape == label.shape == weight.shape and float(weight.mean()) == 3.0
    _, target = PrepareBatchWithWeight()({"image": batch["image"], "label": batch["label"]})
    assert isinstance(target, torch.Tensor)
