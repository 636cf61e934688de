"""Mixed precision: bf16 autocast where the hardware runs it fast (CUDA, or a CPU with AMX-BF16), else fp32."""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch


@functools.cache
def cpu_has_amx_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" on CUDA with bf16 support or a CPU with AMX-BF16, else "fp32"."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_amx_bf16() else "fp32"


def autocast(precision: str, device: torch.device):
    """The autocast context for a resolved precision ("fp32" gives a no-op context)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
