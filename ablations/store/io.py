"""Atomic file writes (temp file in the same folder, then rename) and tolerant JSONL reads. No torch."""
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left, quota exceeded


class DiskFull(OSError):
    """A write that found no space left: its message names the file and the free space there."""

    def __str__(self):
        return self.strerror


def disk_full(path, error: OSError) -> DiskFull:
    """The one message for a full disk (or quota): the path written and what `shutil.disk_usage` says is free."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
        room = f"{free / 2**20:.1f} MiB free there" if free >= 2**20 else f"{free} bytes free there"
    except OSError:
        room = "free space unknown"
    return DiskFull(error.errno, f"disk full writing {path} ({room}; {os.strerror(error.errno)}): free some "
                                 "space and re-run", str(path))


def os_error(e: OSError) -> str:
    """An OSError a user can cause (a read-only root, no permission, a missing parent) as one line: what was
    done, to which path, and why."""
    import traceback
    frames = traceback.extract_tb(e.__traceback__)
    what = next((f.name for f in reversed(frames) if not f.name.startswith("_")), "write") if frames else "write"
    where = f" {e.filename}" + (f" -> {e.filename2}" if e.filename2 else "") if e.filename else ""
    return f"cannot {what}{where}: {e.strerror or e}"


def raise_full(path, error):
    """Turn a full disk's OSError into DiskFull (any other error is left to the caller to re-raise)."""
    if isinstance(error, OSError) and error.errno in FULL and not isinstance(error, DiskFull):
        raise disk_full(path, error) from error


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise_full(path, e)
        raise
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        raise_full(path, e)
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
    """Append rows, one JSON object per line, in one write and fsync. A kill or a full disk can stop it
    short: some whole lines, then maybe a half line, which readers skip. A file whose last line was
    cut short gets a newline first, so the cut line never swallows the first new one."""
    blob = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise_full(path, e)
        raise
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            blob = b"\n" + blob
        view = memoryview(blob)
        while view:  # write(2) may write less than asked, e.g. when the disk fills
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as e:
        raise_full(path, e)
        raise
    finally:
        os.close(fd)


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
