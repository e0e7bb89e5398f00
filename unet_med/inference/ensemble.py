"""Several trained networks (e.g. the folds of a cross-validation) predicting as one.

:class:`EnsembleNetwork` averages the members' class probabilities, as nnU-Net ensembles its
folds: its output is ``log(mean_i softmax(net_i(x)))``, so a later softmax gives exactly the mean
probabilities and an argmax (what batch inference's post-processing takes) is the argmax of the
mean. It shows the members' shape ``spec``, ``spatial_dims``, ``in_channels`` and ``out_channels``,
so :class:`~unet_med.inferers.OverlapTileInferer` plans tiles for it as for one network.

Written here instead of MONAI's ``monai.engines.EnsembleEvaluator`` with
``monai.transforms.MeanEnsembled``, which ensemble *after* the inferer (a whole sliding-window
pass and a stitched whole-image output per member, then the mean); averaging inside the network
runs every member on the same tile, so the stitched output and the memory plan stay those of one
network.

Peak memory of one window: the members run one after another on the tile, so the peak is the
largest member's activations plus two log-probability tiles (the running sum and the member's);
:class:`~unet_med.inferers.OverlapTileInferer` measures it by running this ``forward`` on the
``meta`` device, which counts exactly that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from unet_med.inferers import network_spec
from unet_med.networks.shapes import UNetShapeSpec

__all__ = ["EnsembleNetwork"]


class EnsembleNetwork(nn.Module):
    """Mean class probabilities of several networks that take and give the same shapes.

    Args:
        members: the networks (2 or more), each returning class logits ``(B, C, *spatial)``.
        names: one name per member for error messages (e.g. its checkpoint path); default
            ``member 0``, ``member 1``, ...

    Attributes:
        members: the networks, as an ``nn.ModuleList`` (``.to()``/``.eval()`` reach them all).
        spec: the members' common :class:`~unet_med.networks.shapes.UNetShapeSpec` (valid
            convolutions: the same context margin and pooling period), None when they have none.
        spatial_dims, in_channels, out_channels: the members' common values (None where the
            members do not say).

    Raises:
        ValueError: fewer than 2 members, or two members that differ in shape spec, spatial
            dimensions or channels; the message names both.
    """

    def __init__(self, members: Sequence[nn.Module], names: Sequence[str] | None = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        names = [str(n) for n in names] if names is not None else [f"member {i}" for i in range(len(members))]
        if len(names) != len(members):
            raise ValueError(f"{len(names)} names for {len(members)} ensemble members")
        self.members = nn.ModuleList(members)
        self.names = names
        self.spec: UNetShapeSpec | None = network_spec(members[0])
        for name, member in zip(names[1:], members[1:]):
            other = network_spec(member)
            if other != self.spec:
                raise ValueError(
                    f"ensemble members {names[0]} and {name} have different shape arithmetic "
                    f"({self.spec} vs {other}); their valid-convolution margins and pooling must match "
                    f"to predict the same tiles"
                )
        self.spatial_dims = self._common("spatial_dims")
        self.in_channels = self._common("in_channels")
        self.out_channels = self._common("out_channels")

    def _common(self, attribute: str) -> int | None:
        """The members' value of ``attribute`` (None where none has it); differing values raise."""
        found = [(n, getattr(m, attribute, None)) for n, m in zip(self.names, self.members)]
        known = [(n, v) for n, v in found if v is not None]
        for name, value in known[1:]:
            if value != known[0][1]:
                raise ValueError(
                    f"ensemble members {known[0][0]} and {name} differ in {attribute}: "
                    f"{known[0][1]} vs {value}"
                )
        return int(known[0][1]) if known else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``log(mean_i softmax(net_i(x)))`` over the class axis (1): log-probabilities
        ``(B, C, *spatial)``, summed in log space (``logaddexp``) so small probabilities do not
        underflow."""
        total: torch.Tensor | None = None
        for member in self.members:
            log_probs = torch.log_softmax(member(x), dim=1)
            total = log_probs if total is None else torch.logaddexp(total, log_probs)
        assert total is not None
        return total - math.log(len(self.members))
