"""Where a model runs and in what precision: `--device auto` (CUDA when present), and bf16 autocast where the
hardware runs it fast (CUDA, or a CPU whose bf16 matrix products are measured faster than fp32), else fp32."""
from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path

import torch

from difformer.errors import DifformerError

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # bf16 matrix tiles (Intel) or bf16 dot products (Intel, AMD)


def has_bf16_flag(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo text lists bf16 instructions; AVX512-BF16 without AMX counts too: there bf16
    autocast trained 1.5x faster than fp32 (bench/results/precision-epyc.md)."""
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    return any(f in flags for f in BF16_CPU_FLAGS)


@functools.cache
def cpu_has_bf16() -> bool:
    try:
        return has_bf16_flag(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> the current CUDA device when there is one, else the CPU; any other name as torch reads it."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise DifformerError(f"--device {device}: not a torch device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DifformerError(f"--device {device}: no CUDA device is available here; use --device cpu (or auto)")
    return device


def allow_tf32(device: torch.device, precision: str) -> None:
    """Let float32 matrix products use TF32 on CUDA (8x the throughput from Ampere on) when the precision is
    not an explicit fp32: the ops that bf16 autocast keeps in float32 then run on TF32 too. A process-wide
    torch setting, so it is made by the Trainer and the commands (generate, evaluate, distill), not by
    `difformer.load`."""
    if device.type == "cuda" and precision != "fp32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


MIN_BF16_SPEEDUP = 1.15  # below this, bf16's rounding is not worth it


@functools.cache
def bf16_speedup() -> float:
    """fp32 time / bf16 time of a matrix product the size of a small model's (2048 x 256 @ 256 x 1024), the
    median of 3 ratios of best-of-5 timings, measured once per process (about 0.2 s): the median keeps one
    disturbed timing from flipping the choice between processes. The flags do not settle it: a CPU listing
    AVX512-BF16 ran bf16 1.5x faster on an AMD EPYC and 0.6x as fast on a virtualised Xeon
    (bench/results/precision*.md)."""
    def best(dtype: torch.dtype) -> float:
        a, b = torch.randn(2048, 256, dtype=dtype), torch.randn(256, 1024, dtype=dtype)
        a @ b  # warm-up: first-call packing and thread start
        times = []
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return min(times)

    ratios = sorted(best(torch.float32) / best(torch.bfloat16) for _ in range(3))
    return ratios[1]


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" on CUDA with bf16 support, or on a CPU with AMX-BF16 or AVX512-BF16 where bf16
    products measure at least MIN_BF16_SPEEDUP times faster than fp32; else "fp32"."""
    if precision not in ("auto", "fp32", "bf16"):
        raise DifformerError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() and bf16_speedup() >= MIN_BF16_SPEEDUP else "fp32"


def autocast(precision: str, device: torch.device):
    """The autocast context for a resolved precision ("fp32" gives a no-op context)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
