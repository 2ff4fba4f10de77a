"""Precision by what the device really does (pipeline.core.precision): a pure function, so every GPU generation is
checked here on a CPU."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.precision import GPUS, backend_settings, choose_precision, why

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16

# (device, capability) -> what train.precision=auto picks; explicit requests are taken as asked
TABLE = [
    ("cpu", None, F32),
    ("mps", None, F32),
    ("cuda", GPUS["P100"], F16),  # 6.0: no bf16 tensor cores; is_bf16_supported() says true (emulated)
    ("cuda", GPUS["V100"], F16),
    ("cuda", GPUS["T4"], F16),  # Kaggle's 2xT4, Colab's free tier
    ("cuda", GPUS["A100"], BF16),
    ("cuda", GPUS["A10G"], BF16),
    ("cuda", GPUS["L4"], BF16),
    ("cuda", GPUS["H100"], BF16),
]


@pytest.mark.parametrize(("device", "cc", "expected"), TABLE, ids=[f"{d}-{c}" for d, c, _ in TABLE])
def test_auto_precision_by_device_and_compute_capability(device, cc, expected):
    assert choose_precision("auto", device, cc) == expected
    for request, dtype in (("fp32", F32), ("bf16", BF16), ("fp16", F16)):
        assert choose_precision(request, device, cc) == dtype


def test_the_reason_is_said():
    assert "GradScaler" in why("auto", "cuda", GPUS["T4"], F16) and "7.5 < 8.0" in why("auto", "cuda", (7, 5), F16)
    assert "native bf16" in why("auto", "cuda", GPUS["A100"], BF16)
    assert "emulated" in why("bf16", "cuda", GPUS["T4"], BF16) and "emulated" not in why("bf16", "cuda", (9, 0), BF16)
    assert "slower than fp32" in why("auto", "cpu", None, F32)


def test_tf32_from_ampere_and_autotuning_unless_deterministic():
    assert backend_settings("cpu", None, False) == {}
    assert backend_settings("cuda", GPUS["T4"], False) == {"matmul_tf32": False, "cudnn_tf32": False,
                                                           "cudnn_benchmark": True}
    assert backend_settings("cuda", GPUS["A100"], True) == {"matmul_tf32": True, "cudnn_tf32": True,
                                                            "cudnn_benchmark": False}
