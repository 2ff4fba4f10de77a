"""Which precision a device really runs fast, and the backend switches that go with it.

bf16 is native from CUDA compute capability 8.0 (A100, A10, L4, H100). `torch.cuda.is_bf16_supported()` is also
true on a T4 (7.5) or a P100 (6.0), where bf16 is emulated and slow: their fast path is fp16 with a GradScaler. On
CPU, bf16 autocast is ~15x slower than fp32 on common parts, so auto keeps fp32 there. The choice is a pure function
of (device kind, capability, request), so every GPU generation is tested on a CPU machine.
"""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_BF16 = (8, 0)  # Ampere: bf16 tensor cores, TF32 matmuls

# the cards competitors are lent, for logs and tests (compute capability)
GPUS = {"P100": (6, 0), "V100": (7, 0), "T4": (7, 5), "A100": (8, 0), "A10G": (8, 6), "L4": (8, 9), "H100": (9, 0)}


def choose_precision(requested: str, device_type: str, capability: tuple[int, int] | None = None) -> torch.dtype:
    """The autocast dtype: auto is bf16 on CUDA >= 8.0, fp16 below it, fp32 elsewhere (CPU, MPS); fp32, bf16 and
    fp16 are taken as asked (why() calls an emulated bf16 slow in the fold's log)."""
    if requested == "auto":
        if device_type != "cuda":
            return torch.float32
        return torch.bfloat16 if capability is not None and capability >= NATIVE_BF16 else torch.float16
    return DTYPES[requested]


def why(requested: str, device_type: str, capability: tuple[int, int] | None, dtype: torch.dtype) -> str:
    """One line on why this precision: logged when a fold starts training."""
    cc = f"compute capability {capability[0]}.{capability[1]}" if capability else device_type
    name = str(dtype).removeprefix("torch.")
    if requested != "auto":
        slow = (dtype == torch.bfloat16 and (device_type != "cuda" or (capability or (0, 0)) < NATIVE_BF16))
        return f"{name} (train.precision={requested}{'; bf16 is emulated on ' + cc + ', slow' if slow else ''})"
    if device_type != "cuda":
        return f"{name} (auto: autocast on {device_type} is slower than fp32)"
    if dtype == torch.bfloat16:
        return f"{name} (auto: native bf16 on {cc})"
    return f"{name} + GradScaler (auto: {cc} < 8.0 emulates bf16)"


def capability(device: torch.device) -> tuple[int, int] | None:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def resolve_precision(requested: str, device: torch.device) -> torch.dtype:
    return choose_precision(requested, device.type, capability(device))


def backend_settings(device_type: str, capability: tuple[int, int] | None, deterministic: bool) -> dict[str, bool]:
    """CUDA backend switches: TF32 matmuls and convolutions on Ampere and newer (10-bit mantissa, the speed of
    bf16 for fp32 layers), cuDNN autotuning unless the run must repeat bit for bit. Nothing on CPU."""
    if device_type != "cuda":
        return {}
    tf32 = capability is not None and capability >= NATIVE_BF16
    return {"matmul_tf32": tf32, "cudnn_tf32": tf32, "cudnn_benchmark": not deterministic}


def configure_backends(device: torch.device, deterministic: bool) -> dict[str, bool]:
    """Apply backend_settings for this device; returns them (empty on CPU)."""
    settings = backend_settings(device.type, capability(device), deterministic)
    if settings:
        torch.backends.cuda.matmul.allow_tf32 = settings["matmul_tf32"]
        torch.backends.cudnn.allow_tf32 = settings["cudnn_tf32"]
        torch.backends.cudnn.benchmark = settings["cudnn_benchmark"]
    return settings
