"""Which process of a distributed run this is: the one answer every handler, tracker and bundle
check asks before writing files or logging to MLflow."""

from __future__ import annotations

import os

import ignite.distributed as idist

__all__ = ["process_rank", "is_main_process"]


def process_rank() -> int:
    """The rank of this process: Ignite's once a process group exists (``torchrun`` + DDP),
    before that the ``RANK`` variable ``torchrun`` sets (the bundles read it while they build the
    engines, before ``init_process_group`` runs), 0 off a distributed run."""
    if idist.model_name() != "serial":
        return idist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True off a distributed run, or on its rank 0."""
    return process_rank() == 0
