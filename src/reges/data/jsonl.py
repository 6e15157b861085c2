"""Custom dialogues: one JSON object per line, any domain (see docs/custom_data.md).

    {"dialogue_id": "d1", "turns": [{"role": "user", "content": "...", "item_ids": []},
                                    {"role": "assistant", "content": "...", "item_ids": ["b07"]}]}

`column_map` maps our key names to yours, torchtune style: with
`{"dialogue_id": "conv_id", "turns": "messages", "role": "speaker", "content": "text", "item_ids": "items"}`
a line reads `{"conv_id": ..., "messages": [{"speaker": ..., "text": ..., "items": [...]}]}`.
Turns are kept exactly as given (not merged), so turn indices in example ids match your file.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reges.config import COLUMN_MAP_KEYS
from reges.data import DialogueFile
from reges.errors import ConfigError, DataError
from reges.io import iter_jsonl
from reges.records import ROLES, Dialogue, Turn

logger = logging.getLogger(__name__)

KEYS = COLUMN_MAP_KEYS


def resolve_column_map(column_map: Mapping[str, str]) -> dict[str, str]:
    """Complete a partial column_map with identity entries; reject keys we do not know.

    Raises:
        ConfigError: A key of `column_map` is not one of ours (with a suggestion).
    """
    for key in column_map:
        if key not in KEYS:
            near = difflib.get_close_matches(key, KEYS, n=1)
            hint = f"did you mean {near[0]}?" if near else f"known keys: {', '.join(KEYS)}"
            raise ConfigError(f"data.column_map has unknown key {key!r}; the keys are our names, the values "
                              f"yours; {hint}")
    return {k: column_map.get(k, k) for k in KEYS}


def parse_custom_dialogue(raw: Any, cmap: Mapping[str, str], where: str) -> Dialogue:
    """Validate one custom dialogue object (keys already mapped via `cmap`) and build the Dialogue.

    Raises:
        DataError: A key is missing or has the wrong type, a role is not user/assistant, or there are no turns.
    """
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object per line, got {type(raw).__name__}")
    for ours in ("dialogue_id", "turns"):
        if cmap[ours] not in raw:
            raise DataError(f"{where}: missing key {cmap[ours]!r} (our {ours!r}); has {sorted(raw)}; add it or map "
                            f"it with data.column_map.{ours}")
    dialogue_id = raw[cmap["dialogue_id"]]
    if isinstance(dialogue_id, bool) or not isinstance(dialogue_id, (str, int)) or not str(dialogue_id).strip():
        raise DataError(f"{where}: {cmap['dialogue_id']} must be a non-empty string, got {dialogue_id!r}")
    dialogue_id = str(dialogue_id)
    raw_turns = raw[cmap["turns"]]
    if not isinstance(raw_turns, list) or not raw_turns:
        raise DataError(f"{where}: dialogue {dialogue_id!r} has no turns ({cmap['turns']}={raw_turns!r}); "
                        "give it at least one turn or remove the line")
    turns = []
    for i, t in enumerate(raw_turns):
        at = f"{where}: dialogue {dialogue_id!r} turn {i}"
        if not isinstance(t, dict):
            raise DataError(f"{at}: expected an object, got {t!r}")
        for ours in ("role", "content"):
            if cmap[ours] not in t:
                raise DataError(f"{at}: missing key {cmap[ours]!r} (our {ours!r}); has {sorted(t)}; add it or map "
                                f"it with data.column_map.{ours}")
        role, content = t[cmap["role"]], t[cmap["content"]]
        if role not in ROLES:
            raise DataError(f"{at}: role must be one of {list(ROLES)}, got {role!r}; rename your speakers "
                            "(seeker -> user, recommender -> assistant)")
        if not isinstance(content, str):
            raise DataError(f"{at}: {cmap['content']} must be a string, got {content!r}")
        item_ids = t.get(cmap["item_ids"], [])
        if not isinstance(item_ids, list) or any(
            isinstance(i, bool) or not isinstance(i, (str, int)) or not str(i).strip() for i in item_ids
        ):
            raise DataError(f"{at}: {cmap['item_ids']} must be a list of item id strings, got {item_ids!r}")
        turns.append(Turn(role=role, content=content, item_ids=list(dict.fromkeys(str(i) for i in item_ids))))
    return Dialogue(dialogue_id=dialogue_id, turns=turns)


def load_custom(path: str | Path, column_map: Mapping[str, str] | None = None) -> DialogueFile:
    """Load a custom dialogues JSONL file.

    Args:
        path: One dialogue object per line (docs/custom_data.md).
        column_map: Our key name -> your key name, for the keys you named differently.

    Returns:
        The dialogues in file order. Integer item ids and dialogue ids become strings. Titles are empty:
        they come from your items file, read by the catalog stage.

    Raises:
        ConfigError: `column_map` has a key we do not know.
        DataError: Missing file, malformed line, or a dialogue that breaks the format (file and line named).

    Example:
        >>> f = load_custom("dialogues.jsonl", {"dialogue_id": "conv_id", "turns": "messages"})
        >>> f.dialogues[0].turns[-1].item_ids
        ['b07']
    """
    cmap = resolve_column_map(column_map or {})
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dialogues file not found: {path}; check data.train_files/dev_files/test_files")
    dialogues: list[Dialogue] = []
    for where, raw in iter_jsonl(path):
        dialogues.append(parse_custom_dialogue(raw, cmap, where))
    logger.info("%s: %d custom dialogues", path, len(dialogues))
    return DialogueFile(path=path, variant="custom", dialogues=dialogues)
