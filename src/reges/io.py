"""Files stages exchange: JSONL, TREC run files, the run directory and its manifests.

Every writer is atomic (write to a temporary file, then rename), and a stage directory counts as
complete only once `manifest.json` is written, last. So an interrupted stage never looks complete.
"""

from __future__ import annotations

import datetime as _dt
import errno
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
from urllib.parse import urlsplit, urlunsplit

from reges.errors import ConfigError, DataError, StageCompleteError, StageNotReadyError
from reges.records import Hit

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK_FILE = ".lock"
REDACTED = "***"
# Config keys whose values are secrets: never written to a run directory or a log.
SECRET_KEYS = frozenset({"api_key"})
_VERSIONED_PACKAGES = ("torch", "transformers", "peft", "sentence-transformers", "faiss-cpu", "llama_cpp_python")


def _umask() -> int:
    """The process umask, read without changing it (os.umask can only set it, which races with other threads)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def output_mode() -> int:
    """Mode of files reges writes: 0644 narrowed by the user's umask (mkstemp alone would give 0600)."""
    return 0o644 & ~_umask()


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file next to `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.chmod(tmp, output_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def decode_utf8(data: bytes, where: str) -> str:
    """Decode `data` as UTF-8 (a leading BOM is dropped); non-UTF-8 bytes raise a DataError naming line and byte.

    Why: every text input (dialogues, items, configs, run files) is UTF-8 by contract, and a `UnicodeDecodeError`
    traceback tells a user neither which line is wrong nor what to do.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{where}: not UTF-8 text (byte 0x{data[e.start]:02x} at line {line}, offset {e.start}); "
            "save the file as UTF-8"
        ) from None


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file; missing files and non-UTF-8 bytes raise DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}; check the path")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror}); check its permissions") from None
    return decode_utf8(data, str(path))


def redact_url(url: str) -> str:
    """`url` with any user:password@ part replaced by ***@ (for logs and error messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{REDACTED}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact(obj: Any) -> Any:
    """A copy of a config tree (dicts, lists, scalars) with secrets replaced by "***".

    Secrets are the values of `SECRET_KEYS` (when set) and credentials inside http(s) URLs. Used for everything
    written to a run directory (config.yaml, manifests) so that no key lands on disk.
    """
    if isinstance(obj, dict):
        return {
            k: (REDACTED if k in SECRET_KEYS and v else redact(v)) for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [redact(v) for v in obj]
    if isinstance(obj, str) and obj.startswith(("http://", "https://")):
        return redact_url(obj)
    return obj


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
    for lineno, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg}); fix or remove that line") from None
        except RecursionError:
            raise DataError(f"{path}:{lineno}: JSON nested too deeply; fix or remove that line") from None
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
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); fix the file or rebuild it") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply; fix the file or rebuild it") from None


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
    for lineno, line in enumerate(read_text(path).split("\n"), start=1):
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


def stage_file_sizes(stage_dir: Path) -> dict[str, int]:
    """{path relative to the stage folder: size} of a stage's outputs (its manifest and checkpoints/ left out)."""
    return {
        str(p.relative_to(stage_dir)): p.stat().st_size
        for p in sorted(stage_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST and "checkpoints" not in p.relative_to(stage_dir).parts
    }


class RunDir:
    """A run directory: one sub-directory per stage, each complete once its manifest exists.

    A manifest records each output file's size, so a file truncated after the stage finished (a full disk, a
    copy cut short) is reported by `require` as damaged, with the command that rebuilds it, instead of surfacing
    as a parser's traceback in a later stage.

    Example:
        >>> rd = RunDir("runs/redial")
        >>> out = rd.begin("index", overwrite=False)
        >>> # ... write files under out ...
        >>> rd.finish("index", config=cfg, inputs={"catalog": rd.path / "catalog/items.jsonl"},
        ...           outputs={"item_ids.txt": 6583}, seed=0, started=t0)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--run-dir {self.path} is a file, not a directory; pass a directory (new or a run's)")
        # What the CLI computed for the stage about to run (reges.pipeline); `finish` records it.
        self.fingerprints: dict[str, dict[str, Any]] = {}

    def create(self) -> None:
        """Create the run directory (and its parents), or raise ConfigError saying why it cannot be."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ConfigError(f"--run-dir {self.path}: a parent of it is a file; pass another directory") from None
        except OSError as e:
            raise ConfigError(
                f"--run-dir {self.path} cannot be created ({e.strerror}); pass another directory"
            ) from None

    def stage_dir(self, stage: str) -> Path:
        return self.path / stage

    def is_complete(self, stage: str) -> bool:
        return (self.stage_dir(stage) / MANIFEST).is_file()

    def require(self, stage: str) -> Path:
        """Return the stage directory; raise StageNotReadyError if it has no manifest, DataError if it is damaged."""
        if not self.is_complete(stage):
            raise StageNotReadyError(
                f"{self.stage_dir(stage)}/ has no {MANIFEST}; run `reges {stage} --run-dir {self.path}` first"
            )
        self.check_files(stage)
        return self.stage_dir(stage)

    def check_files(self, stage: str) -> None:
        """Raise DataError when an output file the manifest lists has another size now (truncated or replaced).

        Files the manifest lists but that are absent are not checked here (a shipped bundle keeps only what
        serving reads); whoever needs them says they are missing.
        """
        d = self.stage_dir(stage)
        manifest = read_json(d / MANIFEST)
        for rel, size in (manifest.get("files") or {}).items():
            path = d / rel
            if path.is_file() and path.stat().st_size != size:
                raise DataError(
                    f"{path} is damaged ({path.stat().st_size:,} bytes; stage {stage} wrote {size:,}); rebuild it "
                    f"with `reges {stage} --run-dir {self.path} run.overwrite=true` (or `reges all`, which redoes it)"
                )

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
            # the manifest goes first: a stage cleared half-way must not look complete
            (d / MANIFEST).unlink(missing_ok=True)
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
        """Write the stage manifest, last: config (secrets redacted), input hashes, output rows and file sizes,
        versions, timings, and the stage's fingerprint when the CLI computed one."""
        d = self.stage_dir(stage)
        manifest = {
            "stage": stage,
            "config": redact(_to_jsonable(config)),
            "inputs": {name: file_sha256(p) for name, p in inputs.items()},
            "outputs": {name: {"rows": rows} for name, rows in outputs.items()},
            "files": stage_file_sizes(d),
            "versions": library_versions(),
            "seed": seed,
            "started": started,
            "finished": now_iso(),
        }
        if extra:
            manifest.update(redact(extra))
        if stage in self.fingerprints:
            manifest["fingerprint"] = self.fingerprints[stage]
        write_json(d / MANIFEST, manifest)
        logger.info("stage %s complete: %s", stage, d)
        return manifest

    def manifest(self, stage: str) -> dict[str, Any]:
        self.require(stage)
        return read_json(self.stage_dir(stage) / MANIFEST)


class RunLock:
    """An exclusive lock on a run directory for the commands that write it (stages, `all`).

    Why: two writers in one run directory clear each other's half-written stages. The lock is an `flock` on
    `<run>/.lock`, released by the kernel when the process dies, so a killed run never leaves a stale lock; the file
    holds the holder's pid so that the second writer can name it.
    """

    def __init__(self, run_dir: RunDir) -> None:
        self.path = run_dir.path / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, output_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise ConfigError(
                    f"{self.path.parent} is in use by another reges process (pid {holder}); wait for it to finish, "
                    "or stop it, or use another --run-dir"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
