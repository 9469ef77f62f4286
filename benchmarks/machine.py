"""What the benchmarks print about the machine they ran on: the CPU's best INT8 instruction set."""

from __future__ import annotations


def isa(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The best INT8 instruction set of this CPU: amx, avx512_vnni (or AVX-VNNI), avx2, other or unknown."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return "unknown"
    if "amx_int8" in flags:
        return "amx"
    if flags & {"avx512_vnni", "avx_vnni"}:
        return "avx512_vnni"
    return "avx2" if "avx2" in flags else "other"
