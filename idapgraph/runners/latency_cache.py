"""The latency tables on disk: one JSON file per machine key (what the timings depend on), under
``$IDAPGRAPH_CACHE`` or ``~/.cache/idapgraph``, merged with what another run added meanwhile
and written atomically. The table itself (:class:`idapgraph.passes.latency.LatencyTable`) is
pure; this is the runner side that reads the environment and the disk."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from ..passes.latency import LatencyTable, sig_key


def cache_dir() -> Path:
    """``$IDAPGRAPH_CACHE`` or ``~/.cache/idapgraph``."""
    return Path(os.environ.get("IDAPGRAPH_CACHE") or Path.home() / ".cache" / "idapgraph")


class DiskTable(LatencyTable):
    """A :class:`LatencyTable` read from ``path`` (default: the cache's file for its machine
    key); :meth:`save` writes it back."""

    def __init__(self, machine_info: dict, path: str | os.PathLike | None = None) -> None:
        super().__init__(machine_info)
        digest = hashlib.sha1(sig_key(machine_info).encode()).hexdigest()[:16]
        self.path = Path(path) if path is not None else cache_dir() / "latency" / f"{digest}.json"
        self.merge(self._on_disk())

    def _on_disk(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if isinstance(data, dict) and data.get("machine") == self.machine:
            entries = data.get("entries", {})
            return entries if isinstance(entries, dict) else {}
        return {}

    def save(self) -> None:
        """Merge with what is on disk now (another run may have added entries; this table's
        timings win), write atomically."""
        mine, self.entries = self.entries, {}
        self.merge(mine)
        self.merge(self._on_disk())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"machine": self.machine, "entries": self.entries}, f, sort_keys=True)
        os.replace(tmp, self.path)
