"""Which process am I, and how do the processes of a run share work.

The one home of the project's rank logic, used by the scoring engine, the SSO pipeline, the samplers
shared across ranks and the training launch:

- :func:`launched_ranks`: (rank, world size, init method) of a torchrun / ``srun`` launch that has
  no process group yet; :func:`lightning_child`: a rank started by Lightning's subprocess launcher;
  :func:`launched_local_rank`: ``LOCAL_RANK`` as a launcher set it.
- :func:`process_group`: around a collective piece of work, the ranks it runs on: an initialised
  group is joined (and left as it was), a torchrun / ``srun`` launch starts one (destroyed
  afterwards: only what it started is torn down), otherwise one process.
- :class:`Ranks` / :class:`GroupRanks`: broadcast and gather Python objects among them.
- :func:`is_rank_zero`: whether this process is global rank 0, without importing torch;
- :func:`world`, :func:`shard_map`, :func:`barrier`: the default group's rank and size, a list of
  work shared across its ranks, and waiting for all of them (no-ops in one process).

``torch.distributed`` is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)


class Ranks:
    """One process: rank 0 of 1; broadcast and gather return what they are given."""

    rank = 0
    world = 1
    local_rank = 0

    def broadcast(self, obj: Any) -> Any:
        """``obj`` as rank 0 has it."""
        return obj

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        return [obj]

    def close(self) -> None:
        """Tear down what this object started (nothing in one process)."""


class GroupRanks(Ranks):
    """The ranks of the initialised ``torch.distributed`` group; objects travel over gloo (a gloo
    subgroup of an NCCL group, made on first use and destroyed by :meth:`close`).

    Args:
        timeout_s: how long a collective may wait (plus 600 s; ``None``: a week).
        temporary: the group was started for this work: :meth:`close` destroys it.
    """

    def __init__(self, timeout_s: float | None = None, temporary: bool = False) -> None:
        import torch.distributed as dist

        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.local_rank = local_rank(default=self.rank)
        self.temporary = temporary
        self.timeout = datetime.timedelta(seconds=(timeout_s or 7 * 24 * 3600) + 600)
        self._group: Any = None

    def _object_group(self) -> Any:
        import torch.distributed as dist

        if self._group is None and dist.get_backend() != "gloo":
            self._group = dist.new_group(backend="gloo", timeout=self.timeout)
        return self._group

    def broadcast(self, obj: Any) -> Any:
        """``obj`` as rank 0 has it, on every rank."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self._object_group())
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self._object_group())
        return out

    def close(self) -> None:
        """Destroy the group if it was started for this work, else only the gloo subgroup made here."""
        import torch.distributed as dist

        if not dist.is_initialized():
            return
        if self.temporary:
            dist.destroy_process_group()
        elif self._group is not None:
            dist.destroy_process_group(self._group)
        self._group = None


def local_rank(default: int = 0) -> int:
    """This process's rank on its node (``LOCAL_RANK``, else ``SLURM_LOCALID``, else ``default``)."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", default)))


def launched_ranks() -> tuple[int, int, str] | None:
    """(rank, world size, init method) of a torchrun / env:// or ``srun`` launch of several ranks.

    ``None`` in one process and in the ranks Lightning's own launcher starts (they have no ``RANK``).
    """
    env = os.environ
    if all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        if int(env["WORLD_SIZE"]) > 1:
            return int(env["RANK"]), int(env["WORLD_SIZE"]), "env://"
        return None
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        if SLURMEnvironment.detect():
            slurm = SLURMEnvironment()
            return (
                slurm.global_rank(),
                slurm.world_size(),
                f"tcp://{slurm.main_address}:{slurm.main_port}",
            )
    return None


def launched_local_rank(environ: Mapping[str, str] | None = None) -> int:
    """``LOCAL_RANK`` as a launcher (Lightning's, torchrun) set it; 0 when unset or empty."""
    value = (os.environ if environ is None else environ).get("LOCAL_RANK", "")
    return int(value) if value.strip() else 0


def lightning_child() -> bool:
    """A rank started by Lightning's subprocess launcher (or a non-zero node of a manual launch)."""
    return launched_local_rank() > 0 or int(os.environ.get("NODE_RANK", "0") or 0) > 0


@contextlib.contextmanager
def process_group(backend: str = "gloo", timeout_s: float | None = None) -> Iterator[Ranks]:
    """The ranks a collective piece of work runs on, and tearing down only what was started here.

    - An initialised ``torch.distributed`` group is joined and left initialised.
    - Else a torchrun / ``srun`` launch (:func:`launched_ranks`) starts a group with ``backend``
      (``"auto"``: NCCL on this rank's GPU when CUDA is available, which also becomes the current
      device, else gloo), destroyed when the block ends.
    - Else one process (:class:`Ranks`).

    Args:
        backend: the backend of a group started here.
        timeout_s: how long collectives may wait (plus 600 s; ``None``: a week for the object
            exchanges, torch's default for a started group).
    """
    import torch.distributed as dist

    if not dist.is_available():
        yield Ranks()
        return
    if dist.is_initialized():
        ranks: Ranks = GroupRanks(timeout_s, temporary=False)
    else:
        launched = launched_ranks()
        if launched is None:
            yield Ranks()
            return
        rank, world_size, init_method = launched
        if backend == "auto":
            import torch

            backend = "gloo"
            if torch.cuda.is_available():
                backend = "nccl"
                torch.cuda.set_device(local_rank())  # "cuda" (generation, scoring) is this rank's GPU
        kwargs = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s + 600)}
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size, **kwargs)
        log.info(
            "rank %d of %d: %s process group from the launcher (%s)", rank, world_size, backend, init_method
        )
        ranks = GroupRanks(timeout_s, temporary=True)
    try:
        yield ranks
    finally:
        ranks.close()


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")  # any non-zero one: not rank 0


def is_rank_zero() -> bool:
    """Whether this process is global rank 0 (or the only process)."""
    dist = sys.modules.get("torch.distributed")  # never imports torch for the question
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in RANK_VARIABLES)


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised ``torch.distributed`` process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_map(fn: Callable[[list], Any], items: list) -> list:
    """``fn(items)`` (a function of a list, one result per item), shared across the ranks of the
    ``torch.distributed`` process group: rank r computes items r, r + N, r + 2N... and every rank
    receives all the results in ``items``' order. In one process, simply ``fn(items)``."""
    rank, size = world()
    if size == 1:
        return list(fn(list(items)))
    import torch.distributed as dist

    mine = list(range(rank, len(items), size))
    out = list(fn([items[k] for k in mine])) if mine else []
    gathered: list = [None] * size
    dist.all_gather_object(gathered, (mine, out))
    results: list = [None] * len(items)
    for indices, values in gathered:
        for k, value in zip(indices, values, strict=True):
            results[k] = value
    return results


def barrier() -> None:
    """Wait for every rank of the process group (no-op in one process)."""
    import torch.distributed as dist

    if world()[1] > 1:
        dist.barrier()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
