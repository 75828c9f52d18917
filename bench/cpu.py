"""The CPU a benchmark ran on: its model and the flags that decide bf16 speed, from /proc/cpuinfo.

bf16 matmuls run natively on AVX512-BF16 (Cooper Lake, Zen 4 and later) and AMX-BF16 (Sapphire Rapids
and later); elsewhere oneDNN emulates them in fp32, so bf16 is benchmarked only where a flag says so.
"""
from pathlib import Path

FLAGS = ("avx512f", "avx512_bf16", "amx_bf16")
BF16 = ("avx512_bf16", "amx_bf16")  # either makes bf16 matmuls native


def parse_cpuinfo(text: str) -> dict:
    """{cpu_model, avx512f, avx512_bf16, amx_bf16} from /proc/cpuinfo's text (its first processor)."""
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {"cpu_model": model, **{f: f in flags for f in FLAGS}}


def cpu_info(path="/proc/cpuinfo") -> dict:
    """This machine's parse_cpuinfo, or unknowns where there is no /proc/cpuinfo (macOS, Windows)."""
    try:
        return parse_cpuinfo(Path(path).read_text())
    except OSError:
        return {"cpu_model": None, **dict.fromkeys(FLAGS)}


def bf16_skip_reason(info: dict) -> str | None:
    """Why bf16 is not benchmarked on this CPU, or None when it has native bf16."""
    if any(info[f] for f in BF16):
        return None
    have = ", ".join(f"{f}={'yes' if info[f] else 'no' if info[f] is not None else 'unknown'}" for f in FLAGS)
    return (f"CPU {info['cpu_model'] or 'unknown'} has no native bf16 ({have}): bf16 would be emulated in fp32, "
            "so the bf16 training step, sampling forward and matmul roofline are not measured here")
