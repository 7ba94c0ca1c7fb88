"""Data parallelism over `torch.distributed` ranks: replicated control, sharded compute.

Every rank runs the same loop from the same seeds, so it draws the same problems, reaches the same
decisions (promotions, gates, curriculum steps) and holds the same weights. Only the heavy work is
split:

- `Policy.sample` and `Policy.logprobs` give each rank a block of the rows and gather the results,
  so every rank goes on with the whole batch's completions;
- a training step computes this rank's share of the batch's loss, divided by the whole batch's
  count, and `sync_gradients` sums the gradients before clipping, so every rank takes the same
  optimizer step the whole batch would have given (up to rounding).

Rank 0 alone writes the run directory and draws progress bars. Sampling draws differ by rank
(`step_seed`), so a run on N ranks is a different sample of the same run, not a copy of the
1-rank one.

Why not `DistributedDataParallel`: a step here runs a batch as several forward and backward calls
(runs of similar length, COCONUT's passes), whose count differs by rank; DDP all-reduces inside
every backward and would hang on uneven counts. One flat all-reduce per optimizer step is what it
would do under `no_sync`, and leaves `policy.model` the plain Hugging Face model.

    torchrun --nproc-per-node 4 -m shrinkthink run   # the quickstart, four ranks
    shrinkthink run --procs 2                 # the same ranks, started here (CPU: gloo)
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from shrinkthink.errors import SetupError


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched() -> bool:
    """Whether this process is one of several ranks (torchrun or `--procs` set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> None:
    """Join the process group that torchrun (or `shrinkthink run --procs`) described in the
    environment: NCCL for CUDA devices, gloo otherwise. Once per process; a no-op on one rank."""
    if not launched() or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend)
    except dist.DistError as error:  # a port taken, no loopback, a rank that never came
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise SetupError(f"rank {os.environ.get('RANK', '0')}: {os.environ.get('WORLD_SIZE')} ranks could not meet "
                         f"({backend} at {where}): {reason}; "
                         "`--procs 1` (or `procs: 1`) runs in one process") from error


def threads_per_rank() -> int:
    """CPU threads for each of this machine's ranks: its cores shared out between them."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, (os.cpu_count() or 1) // max(1, local))


def step_seed(text: str) -> None:
    """Seed torch's sampler from `text` (a stage's step), differently on each rank: rank 0 as a
    single process would, so a 1-rank run is unchanged. crc32, not hash(): str hashes change
    with each process (PYTHONHASHSEED), and a resumed step must draw what the crashed one drew."""
    key = text if rank() == 0 else f"{text}:rank{rank()}"
    torch.manual_seed(zlib.crc32(key.encode()))


def block(n: int) -> range:
    """This rank's contiguous block of `n` rows (a group's repeated prompt stays on one rank,
    where the sampler prefills it once)."""
    size, me = world(), rank()
    return range(n * me // size, n * (me + 1) // size)


def balanced(lengths: Sequence[int]) -> list[int]:
    """This rank's rows of a training batch: sorted by length and dealt out in turn, so every
    rank gets about the same number of tokens to compute."""
    size = world()
    if size == 1:
        return list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return sorted(order[rank()::size])


def gather(items: list[Any]) -> list[Any]:
    """Every rank's `items`, concatenated in rank order (each rank gets the whole list)."""
    if world() == 1:
        return items
    parts: list[Any] = [None] * world()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def agree(value: Any) -> Any:
    """Rank 0's `value` on every rank: for a decision read from the disk, which rank 0 may have
    written to while the others looked."""
    if world() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_replicated(what: str, value: Any) -> None:
    """Raise if `value` is not the same on every rank: replicated control has diverged (a bug, or
    ranks that built different tokenizers), and going on would train on nonsense."""
    if world() == 1:
        return
    seen: list[Any] = [None] * world()
    dist.all_gather_object(seen, value)
    if any(v != seen[0] for v in seen):
        raise RuntimeError(f"ranks disagree on {what}: {seen}")


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Rank 0's weights on every rank (a model built from the same seed is already equal; this
    makes sure of it)."""
    if world() == 1:
        return
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)


def sync_gradients(parameters, sums: Sequence[float] = ()) -> list[float]:
    """Sum the gradients of `parameters` over the ranks (each rank's loss being its share of the
    whole batch's, they add up to the whole batch's gradient), in one flat all-reduce; `sums`
    (this rank's shares of the step's statistics) ride along and come back summed. A parameter
    without a gradient on this rank (no rows here) counts as zeros and gets the others' sum."""
    if world() == 1:
        return list(sums)
    parameters = [p for p in parameters if p.requires_grad]
    if not parameters:
        return list(sums)
    device = parameters[0].device
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1).float() for g in grads]
                     + [torch.tensor(list(sums), dtype=torch.float32, device=device)])
    dist.all_reduce(flat)
    offset = 0
    for parameter, grad in zip(parameters, grads):
        count = grad.numel()
        parameter.grad = flat[offset : offset + count].view_as(grad).to(grad.dtype)
        offset += count
    return flat[offset:].tolist()


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
