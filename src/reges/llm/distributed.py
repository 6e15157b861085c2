"""Data-parallel training under `torchrun` (or `accelerate launch`): who this process is, and the few collectives
the training loops need.

The engine is torch.distributed itself. A launcher starts one process per device and sets WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` reads them, joins the process group (NCCL on CUDA,
gloo on CPU) and pins the process to its GPU. Without a launcher (WORLD_SIZE unset or 1) nothing is initialised and
every helper below is a no-op, so a single-process run executes exactly the code it ran before.

Why the loops all-reduce gradients themselves instead of wrapping the model in DistributedDataParallel: a step
normalises its loss by the completion tokens of the *whole* global batch (each rank knows that count, since the
data plan is the same on every rank), so the right reduction is a SUM of the ranks' gradients, while DDP averages;
the ranks may also run different numbers of micro-batches when the batch does not split evenly, which DDP's
per-backward hooks do not allow, and the encoder's in-batch-negatives loss backpropagates through embeddings of
other ranks, which DDP does not see. One flat all-reduce per optimizer step of the trainable parameters' gradients
is what DDP does with `no_sync()` over the accumulation passes; for LoRA those gradients are a few MB.

Example:
    torchrun --nproc-per-node 4 -m reges.cli train-item --config configs/redial-gpu.yaml --run-dir runs/redial-gpu
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from reges.errors import ConfigError, RegesError

if TYPE_CHECKING:  # torch is imported where it is used, so that the CLI can ask `launcher_rank()` cheaply
    import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel job.

    Attributes:
        rank: Global rank (0 writes every file).
        local_rank: Rank on this node (the CUDA device index).
        world_size: Processes in the job (1: not distributed).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer; it is set by torchrun") from None


def launcher_world_size() -> int:
    """WORLD_SIZE as a launcher (torchrun, accelerate launch) set it; 1 when unset."""
    return _env_int("WORLD_SIZE", 1)


def launcher_rank() -> int:
    """RANK as a launcher set it; 0 when unset. For deciding, before any process group exists, who writes."""
    return _env_int("RANK", 0) if launcher_world_size() > 1 else 0


def current() -> DistContext:
    """The context of an initialised process group, else the single-process context (rank 0 of 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), _env_int("LOCAL_RANK", 0), dist.get_world_size())
    return DistContext()


def init_distributed(device: str) -> DistContext:
    """Join the launcher's process group when there is one (idempotent); return this process's context.

    Args:
        device: The resolved training device, "cpu" or "cuda": NCCL on CUDA (and this process pinned to GPU
            LOCAL_RANK, so "cuda" means its own GPU from here on), gloo on CPU.

    Raises:
        ConfigError: WORLD_SIZE > 1 without the rendezvous variables a launcher sets, or more processes on this node
            than it has GPUs.
    """
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return current()
    world_size = launcher_world_size()
    if world_size <= 1:
        return DistContext()
    if not dist.is_available():
        raise ConfigError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed; unset WORLD_SIZE")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} are not set; start the command with "
            "`torchrun --nproc-per-node N -m reges.cli ...` (or `accelerate launch`), or unset WORLD_SIZE"
        )
    local_rank = _env_int("LOCAL_RANK", 0)
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} CUDA device(s); start at most "
                "that many processes per node (torchrun --nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    atexit.register(_destroy)
    ctx = current()
    logger.info("distributed: rank %d of %d (local rank %d), backend %s", ctx.rank, ctx.world_size, local_rank,
                backend)
    return ctx


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    import torch.distributed as dist

    if current().enabled:
        dist.barrier()


def shard(count: int, world_size: int, rank: int) -> range:
    """This rank's contiguous share of `count` things: sizes differ by at most one, the first ranks get more.

    Example:
        >>> [shard(5, 2, r) for r in (0, 1)]
        [range(0, 3), range(3, 5)]
    """
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Sum floats over the ranks (float64, so token counts stay exact); the values themselves when not distributed."""
    import torch
    import torch.distributed as dist

    if not current().enabled:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace every parameter's gradient by the sum of that gradient over the ranks, in one flat all-reduce.

    A parameter without a gradient on this rank (it ran no micro-batch in this step) contributes zeros, and gets the
    summed gradient like the others. No-op when not distributed.
    """
    import torch
    import torch.distributed as dist

    if not current().enabled:
        return
    params = list(params)
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])  # (trainable parameters,)
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def broadcast_parameters(params: Iterable[torch.nn.Parameter]) -> None:
    """Copy rank 0's values of `params` to every rank (what DDP does at construction). No-op when not distributed."""
    import torch
    import torch.distributed as dist

    if not current().enabled:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's `obj` (picklable, in memory only), in rank order; `[obj]` when not distributed."""
    import torch.distributed as dist

    ctx = current()
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` on every rank; `obj` itself when not distributed."""
    import torch.distributed as dist

    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_same(value: str, what: str) -> None:
    """Raise on every rank when the ranks disagree on `value` (e.g. a fingerprint of the training data).

    Raises:
        RegesError: The ranks hold different values; the message names `what`.
    """
    values = all_gather_objects(value)
    if len(set(values)) > 1:
        raise RegesError(
            f"the ranks of this distributed job disagree on {what} ({', '.join(v[:24] for v in values)}); every rank "
            "must read the same files: run all ranks on the same run directory (a shared filesystem across nodes)"
        )


def main_first(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 alone, then let the other ranks go on with its result (or fail with its error).

    Used for what must happen once before the ranks proceed, such as clearing the stage folder: the other ranks wait
    until it is done, and when it raises they raise too instead of waiting forever in the next collective.

    Raises:
        RegesError: On ranks > 0, when `fn` raised on rank 0 (the message repeats rank 0's).
    """
    ctx = current()
    if not ctx.enabled:
        return fn()
    result: Any = None
    error = ""
    if ctx.is_main:
        try:
            result = fn()
        except BaseException as e:
            broadcast_object((None, f"{type(e).__name__}: {e}"))
            raise
    result, error = broadcast_object((result, error))
    if error:
        raise RegesError(f"rank 0 failed: {error}")
    return result


def _collective_device() -> torch.device:
    """Where small tensors for collectives live: the process's GPU under NCCL, the CPU under gloo."""
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_gather_rows(local: torch.Tensor | None, total: int, dim: int, device: torch.device) -> torch.Tensor:
    """The (total, dim) float32 matrix whose rows `shard(total, world_size, r)` come from rank r.

    This rank's rows are its own `local` tensor (the autograd graph kept: gradients of a loss over the whole
    matrix reach this rank's parameters), the other ranks' rows are detached copies. Every rank computing the same
    loss over the gathered matrix and summing its parameter gradients with the others' gives the single-process
    gradient exactly: each rank differentiates the full loss through its own rows only.

    Args:
        local: This rank's rows, (len(shard(total, world_size, rank)), dim), or None when it has none.
        total: Rows over all ranks.
        dim: Row width (needed when `local` is None).
        device: Where the result lives.
    """
    import torch
    import torch.distributed as dist

    ctx = current()
    mine = local.float() if local is not None else torch.zeros((0, dim), device=device)
    if not ctx.enabled:
        return mine
    sizes = [len(shard(total, ctx.world_size, r)) for r in range(ctx.world_size)]
    assert mine.shape[0] == sizes[ctx.rank], (mine.shape, sizes)
    buffer = torch.zeros((max(sizes), dim), dtype=torch.float32, device=_collective_device())
    buffer[: sizes[ctx.rank]] = mine.detach().to(buffer.device)
    gathered = [torch.empty_like(buffer) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, buffer)
    parts = [mine if r == ctx.rank else gathered[r][: sizes[r]].to(device) for r in range(ctx.world_size)]
    return torch.cat(parts)
