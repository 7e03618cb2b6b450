"""Stage and unit caching: what makes a run resumable and a re-run cheap.

A stage (prepare, train_generator, ...) is made of units (one generator per fraction, one segmenter per
fraction x arm x seed, ...). Each unit has a key: the hash of everything that determines its output (its
config, the keys of what it reads). A unit's folder holds `.started` (its key, written first) and `done.json`
(its key and result, written last and atomically). So:
- a unit whose done.json carries the current key is skipped;
- a unit started with the current key but not done (a killed run) is resumed in place: its trainer picks up
  its own checkpoints there;
- a unit started or done with another key is stale: its folder is emptied before it runs again;
- a unit whose trainer finds a checkpoint of another run in it (`ForeignCheckpointError`) is emptied and run
  again, so no folder state can block every later run.
Half-written outputs are never mistaken for finished ones because only done.json says "finished".
"""
from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from data.io import inside, write_text
from data.types import DataError, ForeignCheckpointError
from pipeline.logs import get_logger

if TYPE_CHECKING:
    from segmentation.runtime import DistributedContext

MANIFEST = "manifest.json"
DONE = "done.json"
UNSEALED = "unsealed.json"  # RUN_DIR/unsealed.json: one record per `--unseal` of a sealed test set
STARTED = ".started"


def stable_hash(*parts: Any) -> str:
    """Hash of JSON-able parts, independent of dict order; 16 hex digits are plenty here."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_json(path: Path, payload: Any) -> Path:
    return write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def versions() -> dict[str, str]:
    import monai
    import numpy
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "numpy": numpy.__version__}


def _record_with_key(path: Path, key: str) -> dict[str, Any] | None:
    """The JSON record at `path` if it is readable and carries `key`; anything else counts as not done."""
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("key") == key else None


def unit_done(unit_dir: Path, key: str) -> dict[str, Any] | None:
    return _record_with_key(Path(unit_dir) / DONE, key)


def run_unit(unit_dir: Path, key: str, work: Callable[[Path], dict[str, Any]], *,
             ctx: "DistributedContext | None" = None) -> dict[str, Any]:
    """Run `work(unit_dir)` unless already done with this key; resume if started with it; reset if stale.

    With a distributed `ctx`, every process runs `work` together (a DDP training) and rank 0 alone does the
    bookkeeping (reset, .started, done.json), the others waiting for it before and after."""
    unit_dir = Path(unit_dir)
    record = unit_done(unit_dir, key)
    if record is not None:
        return record["result"]
    main = ctx is None or ctx.is_main
    if main and _started_key(unit_dir) != key:
        _reset(unit_dir, key)
    if ctx is not None:
        ctx.barrier()
    t0 = time.perf_counter()
    try:
        result = work(unit_dir)
    except ForeignCheckpointError as exc:
        # The folder has this unit's key but a checkpoint another run wrote (two runs at once before the run
        # lock, a copied file): start over rather than fail the same way in every later run.
        get_logger().warning(f"{exc}; starting {unit_dir} over")
        if main:
            _reset(unit_dir, key)
        if ctx is not None:
            ctx.barrier()
        result = work(unit_dir)
    if main:
        write_json(unit_dir / DONE, {"key": key, "result": result, "wall_s": round(time.perf_counter() - t0, 2)})
    if ctx is not None:
        ctx.barrier()
    return result


def _started_key(unit_dir: Path) -> str | None:
    """The key the unit folder was started with; None when it is absent or unreadable (so: reset)."""
    try:
        return (unit_dir / STARTED).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _reset(unit_dir: Path, key: str) -> None:
    """An empty unit folder started with `key`: nothing of another key's outputs can leak into it."""
    if unit_dir.exists():
        shutil.rmtree(unit_dir)
    unit_dir.mkdir(parents=True, exist_ok=True)
    write_text(unit_dir / STARTED, key)


@dataclass
class StageRecord:
    """What a stage's manifest.json says: enough to tell whether it is current and how it was made."""

    stage: str
    key: str
    config: Any
    inputs: dict[str, str]
    units: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)


def stage_current(stage_dir: Path, key: str) -> StageRecord | None:
    """The stage's record if it was finished with `key` and every unit it lists is still done with its own key:
    a unit folder reset since (e.g. by a killed run of other settings) makes the stage run again, which redoes
    that unit only, instead of a later stage failing on it."""
    record = _record_with_key(Path(stage_dir) / MANIFEST, key)
    if record is None or any(_unit_gone(Path(stage_dir), name, result)
                             for name, result in (record.get("results") or {}).items()):
        return None
    return StageRecord(**record)


def _unit_gone(stage_dir: Path, name: str, result: Any) -> bool:
    """Whether a manifest's result entry is a unit's (it holds the unit's key) that is no longer done; a name
    leading out of the stage folder counts as gone (never read)."""
    if not (isinstance(result, dict) and isinstance(result.get("key"), str)):
        return False
    try:
        folder = inside(stage_dir, name, source=stage_dir / MANIFEST, what="unit")
    except DataError:
        return True
    return unit_done(folder, result["key"]) is None


def write_stage_manifest(stage_dir: Path, record: StageRecord) -> Path:
    record.versions = versions()
    return write_json(Path(stage_dir) / MANIFEST, record.__dict__)


def invalidate_stage(stage_dir: Path) -> None:
    """--force: forget that the stage and its units were finished (their checkpoints are discarded too)."""
    if Path(stage_dir).exists():
        shutil.rmtree(stage_dir)


def unsealings(run_dir: Path | str) -> list[dict[str, Any]]:
    """The records of RUN_DIR/unsealed.json: every time this run directory's sealed test set was scored."""
    path = Path(run_dir) / UNSEALED
    return read_json(path) if path.is_file() else []
