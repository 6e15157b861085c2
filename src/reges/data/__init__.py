"""Dataset loaders: ReDial, INSPIRED and a documented custom JSONL, all parsed into `Dialogue` records.

Each loader reads one file in its published format and returns a `DialogueFile`: the dialogues, with
turns in order, roles mapped to "user"/"assistant", and item mentions resolved to item ids, plus the titles
the file gives for those ids. `build_examples` turns a dialogue into recommendation examples; it lives here so
that every source of dialogues cuts them the same way (the `data` stage in `reges.data.examples`, the lossy
file's guessed orders in `reges.data.lossy`, other datasets' pairs in `reges.data.cross`).

Only this package knows dataset speaker names (seeker/initiator, recommender/respondent); everything
downstream sees `user` and `assistant`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reges.errors import DataError
from reges.records import Dialogue, RecExample, Role, Turn


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


def build_examples(dialogue: Dialogue, titles: Mapping[str, str]) -> list[RecExample]:
    """Recommendation examples of one dialogue: one per assistant turn that mentions an item.

    Args:
        dialogue: A dialogue with merged turns.
        titles: item_id -> title, for `target_titles` (filled only when every target has a title).

    Returns:
        Examples in turn order, with `example_id` = f"{dialogue_id}_{turn_index}".

    Raises:
        DataError: The dialogue has no turns.

    Example:
        >>> d = Dialogue("7", [Turn("user", "I liked Heat (1995)", ["1"]),
        ...                    Turn("assistant", "Try Heat (1995) or Ronin (1998)", ["1", "2"])])
        >>> [(e.example_id, e.target_item_ids, e.target_mentioned) for e in build_examples(d, {})]
        [('7_1', ['1', '2'], [True, False])]
    """
    if not dialogue.turns:
        raise DataError(f"dialogue {dialogue.dialogue_id!r} has no turns; remove it from the input file")
    examples = []
    seen: set[str] = set()
    for index, turn in enumerate(dialogue.turns):
        targets = list(dict.fromkeys(turn.item_ids))
        if turn.role == "assistant" and targets:
            target_titles = [titles[t] for t in targets] if all(t in titles for t in targets) else []
            examples.append(RecExample(
                example_id=f"{dialogue.dialogue_id}_{index}",
                dialogue_id=dialogue.dialogue_id,
                context=list(dialogue.turns[:index]),
                target_item_ids=targets,
                target_mentioned=[t in seen for t in targets],
                target_titles=target_titles,
                response=turn.content,
            ))
        seen.update(turn.item_ids)
    return examples
