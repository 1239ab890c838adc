"""The native engine on a CUDA GPU (fp32, so its scores must agree with the CPU engine's
within the contract's tolerance); skipped where torch sees no GPU, as on CI."""

import pytest
import torch

from ponder.engines.hf import HFEngine


def start(stack):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    return HFEngine("smollm2-135m", dtype="float32", device="cuda")
