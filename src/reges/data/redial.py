"""ReDial loader: the original `*_data.jsonl` format and its iEvaLM variant.

One JSON object per line: `conversationId`, `initiatorWorkerId` (the seeker), `respondentWorkerId` (the
recommender), `movieMentions` ({movieId: "Title (Year)"}, sometimes `[]`), `initiatorQuestions` and
`respondentQuestions` (form labels, sometimes `[]` instead of `{}`; not used here) and `messages`
[{senderWorkerId, text, ...}], where movies are written `@movieId` in the text.

Two variants exist, told apart by their message keys:
- original (`messageId`, `timeOffset`): one chat message per entry; consecutive messages of one sender are
  merged into one turn here;
- iEvaLM (`turn_id`, `entity`, `item`, ...): already merged. Its `item` lists come from an entity linker
  and miss mentions, so the `@id`s in the text are used for both variants.

Item ids are ReDial movieId strings. An `@id` is resolved to a title from the dialogue's `movieMentions`,
else from `movies_with_mentions.csv`; the title replaces the `@id` in the turn text. HTML escapes in the
original file are undone and whitespace runs collapsed, so both variants give the same turns for the 88
dialogues they share.
"""

from __future__ import annotations

import csv
import html
import io
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reges.data import DialogueFile, merge_turns
from reges.errors import DataError
from reges.io import iter_jsonl, read_text
from reges.records import Dialogue, Role
from reges.titles import normalize_title

logger = logging.getLogger(__name__)

_MENTION = re.compile(r"@(\d+)")
_TOP_KEYS = ("conversationId", "messages", "initiatorWorkerId", "respondentWorkerId", "movieMentions")
# The message key that identifies each variant (see the module docstring).
_VARIANT_KEYS = {"redial-original": "messageId", "redial-ievalm": "turn_id"}


def read_movie_names(path: str | Path, key: str = "data.movie_names_file") -> dict[str, str]:
    """Read ReDial's `movies_with_mentions.csv` (movieId, movieName, nbMentions) into {movieId: title}.

    Titles are normalised ("Cosmos  (2015)" -> "Cosmos (2015)"). It resolves the `@id`s a dialogue's
    `movieMentions` lacks, and names the catalog's films that id2info.json lacks.

    Args:
        path: The CSV file.
        key: The setting that named the file, for the error messages (the catalog's is catalog.names_file).

    Raises:
        DataError: The file is missing or has no movieId/movieName columns.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"movie names file not found: {path}; set {key} to ReDial's movies_with_mentions.csv")
    names: dict[str, str] = {}
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"movieId", "movieName"} <= set(reader.fieldnames):
            raise DataError(f"{path}: expected a CSV header with movieId and movieName, got {reader.fieldnames}; "
                            f"point {key} at ReDial's movies_with_mentions.csv")
        for row in reader:
            movie_id, name = (row["movieId"] or "").strip(), normalize_title(row["movieName"] or "")
            if not movie_id or not name:
                raise DataError(f"{path}:{reader.line_num}: empty movieId or movieName in {row}; fix or drop the row")
            names[movie_id] = name
    return names


def _variant(message: dict[str, Any], where: str) -> str:
    for variant, key in _VARIANT_KEYS.items():
        if key in message:
            return variant
    raise DataError(f"{where}: message keys {sorted(message)} match neither the original ReDial format "
                    "(messageId) nor the iEvaLM one (turn_id); is this a ReDial file? Check data.format")


def _resolve(text: str, mentions: Mapping[str, str], movie_names: Mapping[str, str], where: str,
             titles: dict[str, str]) -> tuple[str, list[str]]:
    """Replace each `@id` in `text` by its title; return the text and the ids in order of first mention."""
    item_ids: list[str] = []

    def title_of(match: re.Match[str]) -> str:
        movie_id = match.group(1)
        title = mentions.get(movie_id) or movie_names.get(movie_id)
        if not title:
            hint = ("add it to movies_with_mentions.csv" if movie_names else
                    "set data.movie_names_file to ReDial's movies_with_mentions.csv")
            raise DataError(f"{where}: movie @{movie_id} is in neither the dialogue's movieMentions nor the movie "
                            f"names file; {hint}, or remove the mention")
        if movie_id not in item_ids:
            item_ids.append(movie_id)
        titles.setdefault(movie_id, title)
        return title

    text = _MENTION.sub(title_of, text)
    return " ".join(text.split()), item_ids


def parse_redial_dialogue(raw: dict[str, Any], movie_names: Mapping[str, str], where: str,
                          titles: dict[str, str]) -> Dialogue:
    """Turn one ReDial JSON object (either variant) into a Dialogue with merged turns and resolved mentions.

    Args:
        raw: The parsed line.
        movie_names: movieId -> title for `@id`s missing from the dialogue's `movieMentions`.
        where: "file:line", for error messages.
        titles: Filled with movieId -> title for every resolved mention.

    Raises:
        DataError: A key is missing, a sender is neither worker, the dialogue has no messages, or an `@id`
            cannot be resolved.
    """
    missing = [k for k in _TOP_KEYS if k not in raw]
    if missing:
        raise DataError(f"{where}: ReDial dialogue lacks {missing}; is this a ReDial file? Check data.format")
    dialogue_id = str(raw["conversationId"])
    where = f"{where} (conversationId {dialogue_id})"
    if not raw["messages"]:
        raise DataError(f"{where}: dialogue has no messages; remove that line")
    seeker, recommender = raw["initiatorWorkerId"], raw["respondentWorkerId"]
    if seeker == recommender:
        raise DataError(f"{where}: initiatorWorkerId == respondentWorkerId == {seeker}, so roles cannot be told "
                        "apart; remove that line")
    # `movieMentions` is `[]` in dialogues that mention nothing; its titles can be null (then the CSV decides).
    if raw["movieMentions"] and not isinstance(raw["movieMentions"], dict):
        raise DataError(f"{where}: movieMentions must be an object {{movieId: title}}, "
                        f"got {raw['movieMentions']!r:.200}")
    mentions = {str(k): normalize_title(v) for k, v in (raw["movieMentions"] or {}).items() if v}
    messages: list[tuple[Role, str, list[str]]] = []
    for message in raw["messages"]:
        sender = message.get("senderWorkerId")
        if sender == seeker:
            role: Role = "user"
        elif sender == recommender:
            role = "assistant"
        else:
            raise DataError(f"{where}: message sender {sender!r} is neither the initiator ({seeker}) nor the "
                            f"respondent ({recommender}); fix or remove that message")
        # The original file HTML-escapes some characters (&gt; &quot; &amp;); the iEvaLM copy does not.
        text = html.unescape(str(message.get("text") or ""))
        text, item_ids = _resolve(text, mentions, movie_names, where, titles)
        messages.append((role, text, item_ids))
    return Dialogue(dialogue_id=dialogue_id, turns=merge_turns(messages))


def load_redial(path: str | Path, movie_names: Mapping[str, str]) -> DialogueFile:
    """Load a ReDial jsonl file in the original or the iEvaLM form (detected from the message keys).

    Args:
        path: A ReDial `*_data.jsonl` file.
        movie_names: From `read_movie_names`; may be empty when every `@id` is in its dialogue's movieMentions.

    Returns:
        The dialogues in file order and the movieId -> title map of every mention.

    Raises:
        DataError: Missing file, malformed line, a file mixing both variants, or an unresolvable `@id`
            (each names the file and line).

    Example:
        >>> names = read_movie_names("movies_with_mentions.csv")
        >>> f = load_redial("valid_data.jsonl", names)
        >>> f.variant, f.dialogues[0].turns[0].role
        ('redial-original', 'user')
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ReDial file not found: {path}; check data.train_files/dev_files/test_files")
    variant = ""
    dialogues: list[Dialogue] = []
    titles: dict[str, str] = {}
    for where, raw in iter_jsonl(path):
        if not isinstance(raw, dict):
            raise DataError(f"{where}: expected a JSON object per line, got {type(raw).__name__}; "
                            "is this a ReDial file? Check data.format")
        messages = raw.get("messages")
        if messages:
            if not isinstance(messages[0], dict):
                raise DataError(f"{where}: messages must be JSON objects, got {messages[0]!r}")
            line_variant = _variant(messages[0], where)
            if variant and line_variant != variant:
                raise DataError(f"{where}: this dialogue is in the {line_variant} form but earlier lines are "
                                f"{variant}; keep one form per file")
            variant = line_variant
        dialogues.append(parse_redial_dialogue(raw, movie_names, where, titles))
    logger.info("%s: %d ReDial dialogues (%s)", path, len(dialogues), variant or "no messages")
    return DialogueFile(path=path, variant=variant or "redial-original", dialogues=dialogues, titles=titles)
