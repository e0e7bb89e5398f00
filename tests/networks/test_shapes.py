"""Valid-size arithmetic: output sizes, smallest inputs, legality and nearest legal sizes, and the
network input of a bundle's patch size."""

from __future__ import annotations

import pytest
import torch

from unet_med.networks import create_unet
from unet_med.networks.shapes import (
    UNetShapeSpec,
    check_input_size,
    context_margin,
    input_patch_size,
    is_legal_size,
    min_input_size,
    nearest_legal_sizes,
    valid_output_size,
)

PAPER = UNetShapeSpec(encoder_convs=(2, 2, 2, 2, 2), decoder_convs=(2, 2, 2, 2))
CICEK = UNetShapeSpec(encoder_convs=(2, 2, 2, 2), decoder_convs=(2, 2, 2))
SAME = UNetShapeSpec(encoder_convs=(2, 2, 2, 2, 2), decoder_convs=(2, 2, 2, 2), padding="same")


def test_paper_and_cicek_sizes() -> None:
    assert valid_output_size((572, 572), PAPER) == (388, 388)
    assert valid_output_size((132, 132, 116), CICEK) == (44, 44, 28)
    assert context_margin(PAPER) == (92,)
    assert context_margin(CICEK, (132, 132, 116)) == (44, 44, 44)


def test_presets_expose_their_spec() -> None:
    assert create_unet("paper", base_width=4).spec == PAPER
    assert create_unet("cicek3d", base_width=4).spec == CICEK


@pytest.mark.parametrize("spec", [PAPER, CICEK, SAME])
@pytest.mark.parametrize("wanted", [1, 2, 7, 50, 99, 388, 1000])
def test_min_input_round_trip(spec: UNetShapeSpec, wanted: int) -> None:
    (size,) = min_input_size(wanted, spec)
    assert is_legal_size(size, spec)
    assert valid_output_size(size, spec)[0] >= wanted
    # and it is the smallest: nothing legal below it reaches the wanted size
    assert all(not is_legal_size(s, spec) or valid_output_size(s, spec)[0] < wanted for s in range(1, size))


def test_anisotropic_3d_round_trip() -> None:
    wanted = (40, 24, 9)
    size = min_input_size(wanted, CICEK)
    out = valid_output_size(size, CICEK)
    assert all(o >= w for o, w in zip(out, wanted))
    assert size == (132, 116, 100)


def test_valid_output_is_input_minus_a_constant() -> None:
    legal = [s for s in range(1, 800) if is_legal_size(s, PAPER)]
    assert legal[0] == 188 and all(b - a == 16 for a, b in zip(legal, legal[1:]))
    assert {s - valid_output_size(s, PAPER)[0] for s in legal} == {184}


def test_illegal_sizes_are_rejected_with_nearest_legal_sizes() -> None:
    assert not is_legal_size(570, PAPER)
    assert nearest_legal_sizes(570, PAPER) == ((556,), (572,))
    with pytest.raises(
        ValueError, match=r"axis 0: 570 is illegal, nearest legal sizes 556 \(below\) and 572"
    ):
        valid_output_size((570, 572), PAPER)


def test_too_small_sizes_have_no_size_below() -> None:
    assert nearest_legal_sizes(100, PAPER) == ((None,), (188,))
    with pytest.raises(ValueError, match=r"axis 2: 20 is illegal, nearest legal sizes None \(below\) and 92"):
        check_input_size((92, 92, 20), CICEK)


def test_anisotropic_illegal_axes_are_named_each() -> None:
    with pytest.raises(ValueError) as err:
        check_input_size((130, 132, 118), CICEK)
    message = str(err.value)
    assert "axis 0: 130 is illegal, nearest legal sizes 124 (below) and 132 (above)" in message
    assert "axis 2: 118 is illegal, nearest legal sizes 116 (below) and 124 (above)" in message
    assert "axis 1" not in message


def test_same_padding_needs_only_divisibility() -> None:
    assert valid_output_size((64, 48), SAME) == (64, 48)
    assert not is_legal_size(60, SAME)  # 60 -> 30 -> 15 is odd before the third pooling
    assert nearest_legal_sizes(60, SAME) == ((48,), (64,))
    assert context_margin(SAME) == (0,)


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
