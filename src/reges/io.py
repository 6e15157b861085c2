"""Files stages exchange: JSONL, TREC run files, the run directory and its manifests.

Every writer is atomic (write to a temporary file, then rename), and a stage directory counts as
complete only once `manifest.json` is written, last. So an interrupted stage never looks complete.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from reges.errors import DataError, StageCompleteError, StageNotReadyError
from reges.records import Hit

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_VERSIONED_PACKAGES = ("torch", "transformers", "peft", "sentence-transformers", "faiss-cpu", "llama_cpp_python")


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file next to `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared and read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write rows (dicts or objects with `to_dict`) as UTF-8 JSONL atomically; return the row count."""
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            if not isinstance(row, dict):
                row = row.to_dict()
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ("file:line", parsed value) for each non-blank line of a JSONL file.

    The location string lets loaders name file and line in their own errors; a malformed line raises
    DataError naming both.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}; check the path in your config")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg}); fix or remove that line") from None
            yield f"{path}:{lineno}", value


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a malformed line raises DataError naming the file and line number."""
    return [row for _, row in iter_jsonl(path)]


def write_json(path: str | Path, obj: Any) -> None:
    """Write one JSON document atomically (pretty-printed, UTF-8)."""
    with atomic_open(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}; check the path in your config")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def write_trec(path: str | Path, run: dict[str, list[Hit]], tag: str) -> int:
    """Write a TREC run file: `qid Q0 item_id rank score tag`, queries sorted, ties by (-score, item_id)."""
    n = 0
    with atomic_open(path) as f:
        for qid in sorted(run):
            hits = sorted(run[qid], key=lambda h: (-h.score, h.item_id))
            for rank, hit in enumerate(hits, start=1):
                f.write(f"{qid} Q0 {hit.item_id} {rank} {hit.score:.6f} {tag}\n")
                n += 1
    return n


def read_trec(path: str | Path) -> dict[str, list[Hit]]:
    """Read a TREC run file into {qid: hits in rank order}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    run: dict[str, list[tuple[int, Hit]]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise DataError(f"{path}:{lineno}: expected 6 columns 'qid Q0 item_id rank score tag', got {line!r}")
            qid, _, item_id, rank, score, _ = parts
            try:
                run.setdefault(qid, []).append((int(rank), Hit(item_id, float(score))))
            except ValueError:
                raise DataError(f"{path}:{lineno}: rank must be an integer and score a number, got {line!r}") from None
    return {q: [h for _, h in sorted(hits, key=lambda x: x[0])] for q, hits in run.items()}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file or of every file under a directory (sorted by relative path)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions recorded in every manifest (installed distributions only; nothing is imported)."""
    versions: dict[str, str] = {}
    for name in ("reges", *_VERSIONED_PACKAGES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent, check=False,
        )
        if out.returncode == 0:
            versions["git"] = out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return versions


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo ("unknown" where there is none, e.g. macOS)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What a benchmark result names as its machine: CPU model, logical cores (all and usable by this process),
    platform, Python, and the 1/5/15-min load average now (these machines are shared; load explains noise)."""
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if sys.platform.startswith("linux") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _to_jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    return obj


class RunDir:
    """A run directory: one sub-directory per stage, each complete once its manifest exists.

    Example:
        >>> rd = RunDir("runs/redial")
        >>> out = rd.begin("index", overwrite=False)
        >>> # ... write files under out ...
        >>> rd.finish("index", config=cfg, inputs={"catalog": rd.path / "catalog/items.jsonl"},
        ...           outputs={"item_ids.txt": 6583}, seed=0, started=t0)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def stage_dir(self, stage: str) -> Path:
        return self.path / stage

    def is_complete(self, stage: str) -> bool:
        return (self.stage_dir(stage) / MANIFEST).is_file()

    def require(self, stage: str) -> Path:
        """Return the stage directory, or raise StageNotReadyError if it has no manifest."""
        if not self.is_complete(stage):
            raise StageNotReadyError(
                f"{self.stage_dir(stage)}/ has no {MANIFEST}; run `reges {stage} --run-dir {self.path}` first"
            )
        return self.stage_dir(stage)

    def begin(self, stage: str, overwrite: bool) -> Path:
        """Prepare an empty stage directory. Refuse to clobber a complete stage unless `overwrite`.

        A stage directory without a manifest is the leftover of an interrupted run, and a complete one is redone
        only with `overwrite`: either way it is cleared, except for a `checkpoints/` folder where resumable stages
        keep their progress (and finished models keyed by a fingerprint of what they were trained on).
        """
        d = self.stage_dir(stage)
        if self.is_complete(stage) and not overwrite:
            raise StageCompleteError(
                f"{d}/ is already complete; pass run.overwrite=true to redo it, or use another --run-dir"
            )
        if d.exists():
            for child in d.iterdir():
                if child.name == "checkpoints":
                    continue
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        d.mkdir(parents=True, exist_ok=True)
        return d

    def finish(
        self,
        stage: str,
        config: Any,
        inputs: dict[str, Path],
        outputs: dict[str, int],
        seed: int,
        started: str,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write the stage manifest, last: config, input hashes, output row counts, versions, timings."""
        manifest = {
            "stage": stage,
            "config": _to_jsonable(config),
            "inputs": {name: file_sha256(p) for name, p in inputs.items()},
            "outputs": {name: {"rows": rows} for name, rows in outputs.items()},
            "versions": library_versions(),
            "seed": seed,
            "started": started,
            "finished": now_iso(),
        }
        if extra:
            manifest.update(extra)
        write_json(self.stage_dir(stage) / MANIFEST, manifest)
        logger.info("stage %s complete: %s", stage, self.stage_dir(stage))
        return manifest

    def manifest(self, stage: str) -> dict[str, Any]:
        self.require(stage)
        return read_json(self.stage_dir(stage) / MANIFEST)
