"""Atomic file writes (temp file in the same folder, then rename) and tolerant JSONL reads."""
import json
import os
import tempfile
from pathlib import Path

import torch


def atomic_write(path, write):
    """Call `write(tmp_path)`, then rename onto `path`: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path, obj):
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def save_torch(path, obj):
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def append_jsonl(path, rows):
    """Append rows, one JSON object per line, each line in a single write."""
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path):
    """(rows, number of lines skipped because they were half-written or not JSON)."""
    rows, bad = [], 0
    if not Path(path).exists():
        return rows, bad
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    return rows, bad
