"""Dataset loaders: ReDial, INSPIRED and a documented custom JSONL, all parsed into `Dialogue` records.

Each loader reads one file in its published format and returns a `DialogueFile`: the dialogues, with
turns in order, roles mapped to "user"/"assistant", and item mentions resolved to item ids, plus the titles
the file gives for those ids. `reges.data.examples` turns dialogues into recommendation examples and is
the `data` stage.

Only this package knows dataset speaker names (seeker/initiator, recommender/respondent); everything
downstream sees `user` and `assistant`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from reges.records import Dialogue, Role, Turn


@dataclass
class DialogueFile:
    """Dialogues parsed from one file.

    Attributes:
        path: The file they came from (its hash goes into the stage manifest).
        variant: Which published form the file was in ("redial-original", "redial-ievalm",
            "inspired-tsv", "inspired-unicrs", "custom"); detected from the file, logged and recorded.
        dialogues: The dialogues, in file order.
        titles: item_id -> title, as the file writes it (normalised); empty when the format carries none.
    """

    path: Path
    variant: str
    dialogues: list[Dialogue]
    titles: dict[str, str] = field(default_factory=dict)


def merge_turns(messages: Iterable[tuple[Role, str, list[str]]]) -> list[Turn]:
    """Join consecutive messages of one speaker into one turn.

    Crowd workers often split one thought over several chat messages; a recommendation point is a whole
    turn, so ReDial and INSPIRED are merged the same way: texts joined with one space, item ids kept in
    order of first mention without repeats.

    Args:
        messages: (role, text, item_ids) in dialogue order.

    Returns:
        The merged turns.
    """
    turns: list[Turn] = []
    for role, text, item_ids in messages:
        text = text.strip()
        if turns and turns[-1].role == role:
            last = turns[-1]
            last.content = f"{last.content} {text}".strip() if text else last.content
            last.item_ids.extend(i for i in item_ids if i not in last.item_ids)
        else:
            turns.append(Turn(role=role, content=text, item_ids=list(dict.fromkeys(item_ids))))
    return turns
