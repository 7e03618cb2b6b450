"""Process-level settings shared by training and evaluation: device, threads, determinism, mixed precision,
torch.compile and multi-process (torchrun / DistributedDataParallel) training.

Distributed training is launched from outside (`torchrun --nproc_per_node=N ...`, or `--nnodes` for several
machines): every process runs the same code, `init_distributed()` reads torchrun's environment (RANK,
WORLD_SIZE, LOCAL_RANK) and joins the process group, and the training loops split each global batch into
equal contiguous shares, one per rank. Without torchrun the same calls are a single-process no-op, so no
code path differs between one and N processes except the gradient all-reduce of DDP.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import inspect
import os
import pickle
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from monai.data import get_track_meta, set_track_meta
from monai.utils import set_determinism
from torch import nn

AMP_CHOICES = ("none", "bf16", "fp16")


# ---------------------------------------------------------------------------------------------- devices
def resolve_device(name: str, key: str = "segmentation.device") -> torch.device:
    """'auto' | 'cpu' | 'cuda' -> a torch device; under torchrun 'cuda' means this process's GPU
    (cuda:LOCAL_RANK). `key` names the config key in error messages."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"{key} = {name!r}: expected 'auto', 'cpu' or 'cuda'")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{key} = 'cuda' but no CUDA device is available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if "LOCAL_RANK" not in os.environ:
        return torch.device("cuda")
    local_rank = int(os.environ["LOCAL_RANK"])
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"{key}: process LOCAL_RANK={local_rank} has no GPU of its own (this machine has "
                         f"{torch.cuda.device_count()}); start at most that many processes per node")
    return torch.device("cuda", local_rank)


def rng_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose generator `torch.random.fork_rng` must save for work on `device`."""
    return [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []


def derive_seed(*keys: int) -> int:
    """A seed that is a pure function of `keys` (e.g. run seed, step, rank), via NumPy's SeedSequence."""
    return int(np.random.default_rng([int(k) for k in keys]).integers(2**62))


# ------------------------------------------------------------------------------------- mixed precision
def autocast_dtype(amp: str, device: torch.device, key: str) -> torch.dtype | None:
    """The autocast dtype for config value `amp` ('none' | 'bf16' | 'fp16') on `device`, or None for float32.

    fp16 needs a GPU (and gradient scaling, see `grad_scaler`); bf16 on a CPU without native bf16 support
    would be emulated and slower than float32, so it falls back to float32 with a warning.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"{key} = {amp!r}: expected one of {list(AMP_CHOICES)}")
    if amp == "none":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError(f"{key} = 'fp16' needs a CUDA device (float16 autocast with gradient scaling); "
                             f"use 'bf16' or 'none' on {device.type}")
        return torch.float16
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        warnings.warn(f"{key} = 'bf16': this CPU has no native bfloat16 support; running in float32")
        return None
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for `dtype` (None = off)."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling for float16 (a no-op scaler otherwise): float16 gradients underflow without it."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


# ------------------------------------------------------------------------------------------ processes
@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` intra-op threads, then restore the previous number.

    Per-slice augmentation and per-case metrics are many small tensor ops; with several threads each op
    waits for the other cores, which on a busy 2-core machine costs far more than it gains.
    """
    previous = torch.get_num_threads()
    if previous != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if previous != n:
            torch.set_num_threads(previous)


def thread_budget(processes: int | None = None) -> int:
    """Intra-op threads one process may use: the cores this process may run on (its CPU affinity, which
    containers and `taskset` narrow) divided by the processes sharing them on this machine (torchrun's
    LOCAL_WORLD_SIZE), at least 1. Two processes with 2 threads each on 2 cores spin-wait on each other and run
    many times slower than with 1 thread each."""
    if processes is None:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, processes))


def limit_threads(processes: int | None = None) -> int:
    """Lower torch's intra-op threads to `thread_budget` (never raises them: OMP_NUM_THREADS=1 or an explicit
    torch.set_num_threads stays as set); returns the number in use."""
    budget = thread_budget(processes)
    if torch.get_num_threads() > budget:
        torch.set_num_threads(budget)
    return torch.get_num_threads()


@contextlib.contextmanager
def determinism(seed: int, enabled: bool) -> Iterator[None]:
    """Seed python/numpy/torch (MONAI's set_determinism) and, if enabled, force deterministic kernels.

    The global deterministic-algorithms flag is restored afterwards so that callers are not affected.
    """
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    set_determinism(seed=seed)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


@contextlib.contextmanager
def without_meta() -> Iterator[None]:
    """MONAI transforms return plain tensors inside the block (no MetaTensor bookkeeping)."""
    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


# ---------------------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly single-process) training run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files, logs and shows progress bars."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, batch_size: int, key: str) -> slice:
        """This rank's contiguous share of a global batch of `batch_size` samples.

        Equal shares keep DDP's gradient average equal to the global batch's gradient for per-sample-mean
        losses; `key` names the config key in the error."""
        if batch_size % self.world_size:
            raise ValueError(f"{key} = {batch_size} must be divisible by the number of training processes "
                             f"({self.world_size}): each process takes an equal share of every batch")
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    # Collectives over this context's processes: no-ops in a single-process context, even inside a process
    # group (e.g. one process per GPU, each training its own sweep unit with `DistributedContext(device=...)`).
    def barrier(self) -> None:
        if self.is_distributed:
            barrier()

    def broadcast_object(self, obj: Any) -> Any:
        return broadcast_object(obj) if self.is_distributed else obj

    def all_gather_objects(self, obj: Any) -> list[Any]:
        return all_gather_objects(obj) if self.is_distributed else [obj]

    def all_reduce_mean(self, values: Sequence[float]) -> list[float]:
        return all_reduce_mean(values) if self.is_distributed else [float(v) for v in values]

    def main_then_broadcast(self, fn: Callable[[], Any]) -> Any:
        return main_then_broadcast(fn) if self.is_distributed else fn()


def init_distributed(device: str = "auto", *, key: str = "device",
                     timeout: timedelta | None = None) -> DistributedContext:
    """Join the torchrun process group (once per process) and return this process's context.

    Under torchrun (WORLD_SIZE > 1 in the environment) the default process group is created on the first
    call: NCCL for CUDA tensors plus Gloo for CPU tensors and object collectives when `device` resolves to a
    GPU, Gloo alone on CPU; each process uses GPU LOCAL_RANK. Later calls reuse the group (the first call's
    backend stays). Without torchrun it is a single-process context and nothing is initialised. `timeout`
    bounds how long a collective waits for the other processes (torch's default when None).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    resolved = resolve_device(device, key)
    if world_size <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistributedContext(device=resolved)
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed")
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        use_nccl = resolved.type == "cuda" and dist.is_nccl_available()
        backend = "cpu:gloo,cuda:nccl" if use_nccl else "gloo"
        dist.init_process_group(backend=backend, **({"timeout": timeout} if timeout is not None else {}))
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                              local_rank=int(os.environ.get("LOCAL_RANK", "0")), device=resolved)


def shutdown_distributed() -> None:
    """Leave the process group (end of a torchrun worker); a no-op in a single process.

    DDP wrappers live in reference cycles: collected only at interpreter shutdown, their reducers and the Gloo
    work they still hold were torn down after the interpreter, which now and then aborted the process
    ("terminate called without an active exception") after the work was done. They are collected here, while
    the interpreter is whole. (No barrier: after an error on one rank it would hang the others.)"""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def _group_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True in a single process and on rank 0 of a process group."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if _group_active():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable `obj` on every rank (`obj` is ignored elsewhere)."""
    if not _group_active():
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order."""
    if not _group_active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(values: Sequence[float]) -> list[float]:
    """Element-wise mean over ranks of a few numbers (e.g. the losses of each rank's share of a batch).

    CPU float64 (Gloo), so it needs no GPU stream sync beyond reading the losses, and the mean of equal
    shares' means is the global batch's mean up to rounding."""
    if not _group_active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / dist.get_world_size()).tolist()


class _RemoteError(RuntimeError):
    pass


def main_then_broadcast(fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 only and return its value on every rank; if it raises, every rank raises.

    For reads that must agree across ranks (e.g. a checkpoint to resume from, which on several machines may
    only exist on the first one). Raising everywhere keeps the ranks in step: a rank that went on alone
    would wait forever in the next collective."""
    if not _group_active():
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    if dist.get_rank() == 0:
        try:
            outcome = ("ok", fn())
        except Exception as exc:  # re-raised below on every rank
            try:
                pickle.loads(pickle.dumps(exc))
                outcome = ("error", exc)
            except Exception:
                outcome = ("error", _RemoteError(f"{type(exc).__name__}: {exc}"))
    kind, value = broadcast_object(outcome)
    if kind == "error":
        raise value
    return value


# ---------------------------------------------------------------------------- training-module wrappers
def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a DDP and/or torch.compile wrapper (what is saved and evaluated)."""
    if isinstance(module, nn.parallel.DistributedDataParallel):
        module = module.module
    return getattr(module, "_orig_mod", module)


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def compile_module(module: nn.Module, example: Sequence[Any], *, what: str,
                   dtype: torch.dtype | None = None) -> nn.Module:
    """torch.compile(module), tried once on `example` inputs (forward + backward under the training's
    autocast); if compiling fails (no C++ compiler, no Triton, an unsupported op...), warn and return the
    module itself so that training goes on eagerly.

    The trial leaves no trace: weights, buffers (e.g. spectral-norm vectors) and the RNG are restored and
    the gradients cleared. The compiled graphs it built are cached for the real steps."""
    device = next(module.parameters()).device
    saved = copy.deepcopy(module.state_dict())
    try:
        compiled = torch.compile(module)
        with torch.random.fork_rng(devices=rng_devices(device)), autocast(device, dtype):
            out = compiled(*example)
        loss = sum(t.float().sum() for t in _tensors(out) if t.requires_grad)
        if isinstance(loss, torch.Tensor):
            loss.backward()
    except Exception as exc:  # any failure means: train without compiling
        warnings.warn(f"{what}: torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
                      f"training without it")
        return module
    finally:
        module.load_state_dict(saved)
        module.zero_grad(set_to_none=True)
    return compiled


def training_module(net: nn.Module, ctx: DistributedContext, *, compile: bool = False,
                    example: Sequence[Any] = (), what: str = "network", dtype: torch.dtype | None = None,
                    sync_buffers: bool = True) -> nn.Module:
    """What the training steps call: `net` (kept as is for saving, EMA and evaluation), compiled when
    `compile` (see `compile_module`; `example` are inputs of one step's shape), and wrapped in
    DistributedDataParallel when there are several processes.

    With several processes, BatchNorm layers become SyncBatchNorm on GPUs so that their statistics are those
    of the global batch; on CPU torch has no SyncBatchNorm, so each process normalises its own share (a
    warning says so). The networks here use instance norm, which is per sample and needs nothing.
    `sync_buffers=False` for networks whose buffers evolve identically on every rank anyway (spectral norm's
    power-iteration vectors depend on the weights only): no broadcast of rank 0's buffers before each forward
    (they are still made equal once, when DDP wraps the module).
    """
    if ctx.is_distributed and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        if ctx.device.type == "cuda":
            for name, child in list(net.named_children()):
                net.add_module(name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            warnings.warn(f"{what}: BatchNorm under distributed CPU training normalises each process's share "
                          f"separately (SyncBatchNorm needs GPUs), so results differ from a single process")
    module = compile_module(net, example, what=what, dtype=dtype) if compile else net
    if not ctx.is_distributed:
        return module
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters else \
        "broadcast_buffers"  # renamed in torch 2.13
    return ddp(module, device_ids=device_ids, **{sync: sync_buffers})
