"""Mixed precision: bf16 autocast where the hardware runs it fast (CUDA, or a CPU with bf16 instructions), else fp32."""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" on CUDA with bf16 support or a CPU with AMX-BF16 or AVX512-BF16, else "fp32"."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def autocast(precision: str, device: torch.device):
    """The autocast context for a resolved precision ("fp32" gives a no-op context)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
