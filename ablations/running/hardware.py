"""The CPU a run or a benchmark is on: its model and the flags that decide bf16 speed, from /proc/cpuinfo.

bf16 matmuls run natively on AVX512-BF16 (Cooper Lake, Zen 4 and later) and AMX-BF16 (Sapphire Rapids
and later); elsewhere oneDNN emulates them in fp32, many times slower than fp32 itself.
"""
from pathlib import Path

import torch

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


def flag_words(info: dict) -> str:
    """The bf16 flags as words: "avx512f=no, avx512_bf16=yes, amx_bf16=unknown"."""
    return ", ".join(f"{f}={'yes' if info[f] else 'no' if info[f] is not None else 'unknown'}" for f in FLAGS)


def bf16_refusal(bf16: bool, device, info: dict | None = None) -> str | None:
    """Why a run with `bf16 = true` must not train on `device`, or None. On a CPU without native bf16
    autocast would train on in oneDNN's fp32 emulation: a grid made elsewhere and resumed here would crawl
    without a word, so it is refused instead. An unknown CPU (no /proc/cpuinfo) is let through."""
    if not bf16 or torch.device(device).type != "cpu":
        return None
    info = cpu_info() if info is None else info
    if any(info[f] for f in BF16) or all(info[f] is None for f in BF16):
        return None
    return (f"bf16 = true, but this CPU ({info['cpu_model'] or 'unknown model'}; {flag_words(info)}) has no native "
            "bf16: autocast would run in oneDNN's fp32 emulation, many times slower. Run it on a GPU or a CPU with "
            "avx512_bf16 or amx_bf16; `--set base.bf16=false` is a different run (bf16 is part of the run id)")
