"""One read of each run folder per command. No torch.

A command that looks at run folders (run, list, collect, submit, status) reads each file of a folder at most
once: `Reads.of(folder)` is the folder as this command first read it (`Folder`), each file read when first
asked for and then kept, its config.json made into a TrainConfig once. A command that changes a folder (a
migration, a training, a config.json written) forgets it (`Reads.forget`, `Reads.clear`), and the next look
reads it again.
"""
from functools import cached_property
from pathlib import Path

from ablations.run.config import TrainConfig
from ablations.store import claim as claims
from ablations.store.io import read_json
from ablations.store.layout import CONFIG, ROWS, last_step, read_status, trained_step
from ablations.store.schema import key, read_lines, rows_of


class Folder:
    """A run folder (or a record) as one command reads it: each property reads its file the first time."""

    def __init__(self, path):
        self.path = Path(path)

    @cached_property
    def record(self) -> dict | None:
        """config.json, or None when it is missing or not a JSON object."""
        return read_json(self.path / CONFIG)

    @cached_property
    def config(self) -> TrainConfig:
        """The TrainConfig config.json records (`TrainConfig.from_record`: it raises on a record that is not one)."""
        return TrainConfig.from_record(self.record)

    @cached_property
    def status(self) -> dict:
        """status.json (`layout.read_status`)."""
        return read_status(self.path)

    @cached_property
    def lines(self) -> list:
        """rows.jsonl's lines, parsed (`schema.read_lines`)."""
        return read_lines(self.path / ROWS)

    @cached_property
    def rows(self) -> list[dict]:
        """The rows of rows.jsonl (a torn append's and lines that are not rows left out: `schema.rows_of`)."""
        return rows_of(self.lines)[0]

    @cached_property
    def keys(self) -> set:
        """The eval keys of the rows (`schema.key`)."""
        return {key(r) for r in self.rows}

    @cached_property
    def claim(self) -> dict | None:
        """claim.json (`claim.read`)."""
        return claims.read(self.path)

    @cached_property
    def last_step(self) -> int:
        """The newest checkpoint's step (`layout.last_step`), 0 without one."""
        return last_step(self.path)

    @property
    def trained_step(self) -> int:
        """How far the run was trained (`layout.trained_step`)."""
        return trained_step(self.path, self.status, self.last_step)


class Reads:
    """The run folders one command has looked at, each read once (`of`)."""

    def __init__(self):
        self._seen = {}

    def of(self, folder) -> Folder:
        path = Path(folder)
        if path not in self._seen:
            self._seen[path] = Folder(path)
        return self._seen[path]

    def forget(self, *folders):
        """Read these folders again when next asked for: this command changed them."""
        for f in folders:
            self._seen.pop(Path(f), None)

    def clear(self):
        """Read every folder again when next asked for (a migration moved or rewrote some)."""
        self._seen.clear()


def look(reads: Reads | None, folder) -> Folder:
    """`reads.of(folder)`, or a folder read afresh when the caller keeps no reads."""
    return (reads or Reads()).of(folder)
