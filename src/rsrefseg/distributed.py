"""Python objects from every DDP rank (per-sample rows, RNG states); a no-op in one process."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def world_size() -> int:
    """The number of ranks of the initialised process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_objects(items: list[Any], *, to_all: bool = True) -> list[Any]:
    """Every rank's ``items``, concatenated in rank order.

    Args:
        items: this rank's picklable objects.
        to_all: every rank gets the result (an all-gather); False: rank 0 only, the others get []
            (a gather, for large objects such as rendered images).
    """
    if world_size() == 1:
        return list(items)
    if to_all:
        shards: list[Any] = [None] * world_size()
        dist.all_gather_object(shards, items)
    else:
        shards = [None] * world_size() if dist.get_rank() == 0 else None
        dist.gather_object(items, shards, dst=0)
    return [item for shard in shards or [] for item in shard]
