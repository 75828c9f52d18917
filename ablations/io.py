"""Atomic file writes (temp file in the same folder, then rename) and tolerant JSONL reads. No torch."""
import json
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder):
    """Make a rename or a new file in `folder` durable (the folder's entry, not only the file's bytes)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Call `write(tmp_path)`, fsync it, rename it onto `path` and fsync the folder: readers see the old
    file or the new one, never half, and after a crash or power loss the new one is whole. The file
    gets the user's umask (mkstemp's 0600 would hide it from a group-shared folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path, obj):
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def write_text(path, text: str):
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_json(path, default=None):
    """The JSON object in `path`, or `default` when it is missing or unreadable."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default
    return value if isinstance(value, dict) else default


def append_jsonl(path, rows):
    """Append rows, one JSON object per line, in a single write: a kill leaves all of them or a
    half-written last line, which `read_jsonl` skips."""
    blob = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    with open(path, "a") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path, required=("metric", "value")):
    """(objects, number of lines skipped because they were half-written, not JSON, or not an object
    with the `required` keys)."""
    rows, bad = [], 0
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return rows, bad
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict) and all(k in row for k in required):
            rows.append(row)
        else:
            bad += 1
    return rows, bad
