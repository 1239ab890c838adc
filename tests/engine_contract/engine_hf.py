"""The native engine on the bundled model (fp32, CPU)."""

from ponder.engines.hf import HFEngine


def start(stack):
    return HFEngine("smollm2-135m", dtype="float32", device="cpu")
