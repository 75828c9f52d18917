"""The CPU a benchmark ran on (ablations/running/hardware.py): bf16 is benchmarked only where a flag says
its matmuls are native."""
from ablations.running.hardware import BF16, FLAGS, cpu_info, flag_words, parse_cpuinfo

__all__ = ["FLAGS", "BF16", "cpu_info", "parse_cpuinfo", "bf16_skip_reason"]


def bf16_skip_reason(info: dict) -> str | None:
    """Why bf16 is not benchmarked on this CPU, or None when it has native bf16."""
    if any(info[f] for f in BF16):
        return None
    return (f"CPU {info['cpu_model'] or 'unknown'} has no native bf16 ({flag_words(info)}): bf16 would be emulated "
            "in fp32, so the bf16 training step, sampling forward and matmul roofline are not measured here")
