"""What this machine's CPU is, as /proc/cpuinfo says (kernels are chosen and built by it)."""

from __future__ import annotations


def cpu_vendor() -> str:
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD"; "" where it cannot be read)."""
    return cpu_info("vendor_id")


def cpu_info(field: str) -> str:
    """A field of the first CPU in /proc/cpuinfo ("vendor_id", "model name"); "" where it
    cannot be read."""
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info
                         if line.split(":", 1)[0].strip() == field), "")
    except OSError:
        return ""
