"""Which float precision a stage computes in: `auto` picks bf16 only where the hardware has it.

A bf16 matmul is fast only on hardware with bf16 instructions. On a 2-core AMD EPYC with AVX2 only,
a (512, 576) @ (576, 1536) matmul ran at 35 GFLOPS in fp32 and 1.1 GFLOPS in bf16 (oneDNN emulates
bf16 there), so a bf16 default made the quickstart ~8x slower. On a Xeon with AMX the same matmul ran
4.0x faster in bf16, but on a Xeon with AVX512-BF16 and no AMX it ran 0.60x as fast (253 vs 151
GFLOPS; evaluate 0.85x): AVX512-BF16 alone does not make bf16 pay (benchmarks/history.md §9). Hence
`auto`: bf16 on CUDA devices that support it and on CPUs with AMX-BF16, else fp32. The detection
lives here and nowhere else.

Config fields typed `Precision` take "auto" | "bfloat16" | "float32"; a stage turns them into a torch
dtype with `resolve_precision(value, device)`. `resolved_config_dump` replaces every "auto" in a
config by what it resolves to on this device, so a stage's identity (and its reuse) follows the
precision actually used, not the word "auto".
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel

log = logging.getLogger("sparsequant")


class _PrecisionField:
    """Marker in a field's metadata: this value is a precision that `auto` may resolve."""


PRECISION_FIELD = _PrecisionField()
Precision = Annotated[Literal["auto", "bfloat16", "float32"], PRECISION_FIELD]

# /proc/cpuinfo names of the bf16 instructions that make bf16 faster than fp32 here: AMX tiles only
# (AVX512-BF16's dot-product instructions alone were slower than fp32 in oneDNN, benchmarks/history.md §9).
_BF16_CPU_FLAGS = ("amx_bf16",)


@functools.cache
def _cpuinfo_field(key: str) -> str | None:
    """The value of the first `key : value` line of /proc/cpuinfo (read once per key); None off Linux."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == key), None)


def cpu_model() -> str:
    """The CPU's marketing name (what `lscpu` calls "Model name"), for logs and benchmark records."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 instruction flags this CPU reports (empty: bf16 would be emulated; also off
    Linux, where there is no reliable way to tell, so bf16 is not assumed)."""
    flags = (_cpuinfo_field("flags") or "").split()
    return tuple(flag for flag in _BF16_CPU_FLAGS if flag in flags)


def native_bf16(device: str) -> bool:
    """True when `device` ("cpu", "cuda", "cuda:1") computes bf16 matmuls natively."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(cpu_bf16_flags())


def resolved_name(value: str, device: str) -> str:
    """"auto" -> "bfloat16" or "float32" for `device`; explicit values are returned unchanged."""
    if value != "auto":
        return value
    return "bfloat16" if native_bf16(device) else "float32"


def resolve_precision(value: str, device: str, what: str = "compute"):
    """The torch dtype `value` means on `device`, warning once when bf16 is asked for but emulated."""
    import torch

    name = resolved_name(value, device)
    if name == "bfloat16" and not native_bf16(device):
        _warn_emulated_bf16(device, what)
    return torch.bfloat16 if name == "bfloat16" else torch.float32


def autocast_dtype(value: str, device: str, what: str = "autocast"):
    """For autocast fields: torch.bfloat16, or None for plain fp32 (no autocast context)."""
    import torch

    dtype = resolve_precision(value, device, what)
    return dtype if dtype == torch.bfloat16 else None


def autocast_context(dtype, device):
    """torch.autocast for a bf16 `dtype` on `device` (a torch.device or string); a no-op context for
    None or float32 (fp32 needs no autocast)."""
    import contextlib

    import torch

    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@functools.cache  # once per (device, field) for the whole process, not once per stage
def _warn_emulated_bf16(device: str, what: str) -> None:
    log.warning("%s: bfloat16 was asked for, but %s (%s) has no native bf16 instructions (no AVX512-BF16/AMX); "
                "oneDNN emulates it, measured ~30x slower than fp32 on an AVX2-only AMD EPYC (1.1 vs 35 GFLOPS). "
                "Set it to `auto` (or float32) unless you need bf16 numerics.", what, device, cpu_model())


def describe(device: str) -> str:
    """One line for logs: the device, the CPU model, and what `auto` resolves to."""
    where = device if device.startswith("cuda") else f"cpu ({cpu_model()})"
    flags = ", ".join(cpu_bf16_flags()) or "no AMX-BF16"
    return f"{where}: auto precision = {resolved_name('auto', device)} ({flags if device == 'cpu' else 'cuda'})"


def resolved_config_dump(config: BaseModel, device: str) -> dict[str, Any]:
    """`config.model_dump(mode="json")` with every `auto` precision replaced by what it resolves to."""
    dump = config.model_dump(mode="json")
    for path, value in resolved_precisions(config, device).items():
        *parents, leaf = path.split(".")
        node = dump
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return dump


def resolved_precisions(config: BaseModel, device: str, prefix: str = "") -> dict[str, str]:
    """{"autocast": "float32", "distill.teacher_dtype": "float32"}: every precision field, resolved."""
    out: dict[str, str] = {}
    for name, info in type(config).model_fields.items():
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            out |= resolved_precisions(value, device, f"{prefix}{name}.")
        elif PRECISION_FIELD in info.metadata:
            out[prefix + name] = resolved_name(value, device)
    return out
