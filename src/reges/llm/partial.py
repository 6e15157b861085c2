"""Resumable batch inference: the rows a stage has finished, appended to a file as it goes.

`rewrite` and `generate` call an LLM once per example, which on a 10k-example split behind a server (or a long CPU
run with the hf backend) takes hours. Each finished batch of rows is appended to
`<stage>/checkpoints/<split>.partial.jsonl` (kept by `RunDir.begin`, like the training checkpoints) and flushed to
disk; a run started again after a crash, a kill or a lost server skips the examples it finds there and computes
only the rest. The final `<split>.jsonl` is written from all rows once the split is done, and the stage removes
`checkpoints/` before writing its manifest.

A row is reused only when both fingerprints match:
- the file's, over the settings that decide an answer (the model, its dtype and context, the adapter's training
  manifest, the decoding settings; not the endpoint's key, timeout or retries, which change no answer). A
  file written under other settings is discarded (logged) and the split starts over;
- the row's `input_sha`, over the example's own input (its prompt, and its candidates in generate): an example whose
  prompt changed (other retrieved candidates, another query) is computed again.

File format: line 1 is `{"fingerprint": ..., "settings": {...}}`, then one JSON row per example. A line cut short
by a crash in the middle of a write is dropped (and the file cut back to the last whole line before appending).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reges.errors import DataError

if TYPE_CHECKING:
    from reges.config import LLMConfig

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
# LLM settings that change no answer: a run may change them when it resumes.
RUNTIME_FIELDS = ("api_key", "api_key_file", "timeout_s", "max_retries")


def llm_settings(cfg: LLMConfig, backend: str) -> dict[str, Any]:
    """The `llm` settings that decide the answers, for a fingerprint.

    On the openai backend `batch_size` is the number of requests in flight, which changes no answer, so it is left
    out too: a crashed run against an overloaded server may resume with less concurrency.
    """
    skip = RUNTIME_FIELDS + (("batch_size",) if backend == "openai" else ())
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}


def sha(obj: Any) -> str:
    """A short sha256 of `obj` as canonical JSON."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class PartialRows:
    """Finished rows of one split of a batch stage, on disk as they are made.

    Args:
        path: The partial file (`<stage>/checkpoints/<split>.partial.jsonl`).
        settings: What decides the answers (JSON-serialisable); its fingerprint keys the file.

    Example:
        >>> partial = PartialRows(out / "checkpoints" / "dev.partial.jsonl", {"llm": ..., "max_new_tokens": 16})
        >>> done = partial.load()  # {example_id: row} of an earlier, interrupted run (or {})
        >>> partial.append([{"example_id": "d1", "input_sha": sha(prompt), "query": "..."}])
    """

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = Path(path)
        self.settings = settings
        self.fingerprint = sha(settings)

    def load(self) -> dict[str, dict[str, Any]]:
        """The rows an earlier run of the same settings finished, by example id; {} when there are none.

        A file of other settings is deleted (they would mix two configurations); a torn last line is dropped.
        """
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) != len(data):
            logger.warning("%s: dropping a line cut short by the interruption (%d bytes)", self.path,
                           len(data) - len(whole))
            with self.path.open("r+b") as f:
                f.truncate(len(whole))
        lines = whole.decode("utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
            rows = [json.loads(line) for line in lines[1:]]
        except json.JSONDecodeError as e:
            raise DataError(f"{self.path} is not a partial-results file ({e}); delete it to start the split over") \
                from None
        if header.get("fingerprint") != self.fingerprint:
            changed = sorted(k for k in set(self.settings) | set(header.get("settings", {}))
                             if header.get("settings", {}).get(k) != self.settings.get(k))
            logger.warning("%s was written with other settings (%s): starting the split over", self.path,
                           ", ".join(changed) or "unknown")
            self.path.unlink()
            return {}
        done = {row["example_id"]: row for row in rows}
        logger.info("%s: resuming with %d finished examples", self.path, len(done))
        return done

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append finished rows (each with "example_id") and flush them to disk before returning."""
        new = not self.path.is_file()
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            if new:
                f.write(json.dumps({"fingerprint": self.fingerprint, "settings": self.settings},
                                   ensure_ascii=False) + "\n")
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
