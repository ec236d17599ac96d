"""Accelerate set-up: one place that decides device, mixed precision and data parallelism.

**More than one device.** Base training, retraining and every unlearning algorithm run
data-parallel when launched as several processes, one per device::

    accelerate launch --num_processes 2 -m unlearn_lib.cli train-base --dataset data/digits --out models/base
    torchrun --nproc_per_node 2 -m unlearn_lib.cli train-base ...   # the same without accelerate's launcher
    torchrun --nproc_per_node 2 -m unlearn_lib.cli train-base --device cpu ...   # CPU processes (gloo)

(``accelerate launch --cpu --num_processes N`` starts one process unless MPI is set up: for
CPU processes use torchrun.)

Every process draws the same global batch (indices, guidance dropout, timesteps, noise)
from the same seeded generator, then runs the model on its contiguous share of the rows
(process r of W takes rows [r B / W, (r + 1) B / W)); the gradients are averaged across
processes (DDP for training, :func:`all_reduce_mean` for the unlearning loop), so a step
sees the mean over the whole batch, as a single process does: the result matches a
single-process run up to floating-point rounding. The batch size must therefore be a
multiple of the number of processes (refused otherwise). A model with dropout (the
``cifar10-ddpm`` preset) draws other dropout masks than a single process, so it matches
in distribution, not number for number. Only the main process writes checkpoints and the
trained base model and shows progress bars. The unlearning algorithms run the same way from
Python in every launched process (:class:`~unlearn_lib.unlearning.loop.UnlearningLoop`);
whoever saves their result should do so in the main process only (:func:`is_main_process`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.state import AcceleratorState, GradientState

from ..errors import ConfigError


def resolve_precision(device: torch.device, mixed_precision: str) -> str:
    """``auto`` is bf16 on CUDA (the useful precision on H100-class cards) and fp32 on CPU."""
    if mixed_precision == "auto":
        return "bf16" if device.type == "cuda" else "no"
    if mixed_precision not in ("no", "bf16", "fp16"):
        raise ConfigError(f"mixed_precision must be auto, no, bf16 or fp16, got {mixed_precision!r}")
    if device.type != "cuda" and mixed_precision != "no":
        raise ConfigError(f"mixed precision {mixed_precision} needs a CUDA device")
    return mixed_precision


def make_accelerator(device: torch.device, mixed_precision: str = "auto") -> Accelerator:
    """A fresh Accelerator; earlier ones in this process (tests, notebooks) are forgotten.

    Resetting accelerate's state only forgets its bookkeeping: under a distributed launch the
    process group stays initialised and the new Accelerator joins it again. ``split_batches``:
    a step's batch is the global batch split across processes, so a prepared learning-rate
    schedule steps once per step, not once per process.
    """
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(
        cpu=device.type == "cpu",
        mixed_precision=resolve_precision(device, mixed_precision),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )


# ---- data parallelism ------------------------------------------------------------------------


def world_size() -> int:
    """How many processes train together (1 unless launched distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def process_index() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return process_index() == 0


def wait_for_everyone() -> None:
    if world_size() > 1:
        dist.barrier()


def check_divisible(batch_size: int, what: str = "batch_size") -> None:
    """Refuse a global batch that the processes cannot share equally (the mean would be weighted)."""
    w = world_size()
    if batch_size % w:
        raise ConfigError(
            f"{what} {batch_size} is not a multiple of the world size {w} (processes launched): "
            f"each process takes an equal share of the batch; use a multiple of {w}"
        )


def shard_rows(n: int) -> slice:
    """This process's contiguous share of ``n`` rows (all of them in a single process)."""
    w = world_size()
    if w == 1:
        return slice(None)
    if n % w:
        raise ConfigError(f"a batch of {n} rows cannot be shared equally by {w} processes")
    r = process_index()
    return slice(r * n // w, (r + 1) * n // w)


def all_reduce_mean(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mean of each tensor over all processes (one collective); the tensors themselves in one process."""
    w = world_size()
    if w == 1 or not tensors:
        return tensors
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= w
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].view(t.shape).to(t.dtype))
        start += t.numel()
    return out


def average_gradients(params: list[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over all processes (nothing in one process).

    For loops that run the model unwrapped (no DDP): every process computed the loss on its
    equal share of the global batch, so the mean of the shares' gradients is the whole batch's.
    """
    if world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    for p, g in zip(params, all_reduce_mean(grads), strict=True):
        p.grad = g


def mean_value(value: torch.Tensor | float) -> float:
    """A scalar's mean over all processes (a shard's loss becomes the whole batch's)."""
    if world_size() == 1:
        return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    t = value.detach().reshape(1).float() if isinstance(value, torch.Tensor) else torch.tensor([float(value)])
    return float(all_reduce_mean([t])[0])
