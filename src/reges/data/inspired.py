"""INSPIRED loader: the original `dialog_data/*.tsv` and the UniCRS jsonl form.

- Original TSV (sweetpeach/Inspired): a header and one row per utterance, tab-separated, no quoting
  (texts contain bare double quotes; most are written QUOTATION_MARK, restored here). Used columns:
  `dialog_id`, `speaker` (SEEKER/RECOMMENDER), `text`, and `movies` ("Title (Year); Title (Year)", the
  dataset's own mention annotation, cleaner than the automatic links of the UniCRS form).
- UniCRS jsonl (`train_data_dbpedia.jsonl`): each line is a JSON *array* of utterances
  {role (SEEKER/RECOMMENDER), text, movie ["Title (Year)"], ...}. It has no dialogue ids, so dialogues get
  deterministic ids from the file name and line number (`train-000001` for line 1 of `train_*.jsonl`).

Consecutive rows of one speaker are merged into one turn. INSPIRED has no item ids, so an item's id is
`reges.titles.title_id` of its title: "Knives Out (2019)" -> "knivesout-2019", and the spellings of one film
share it ("The Avengers (2012)" and "Avengers (2012)" -> "avengers-2012"; "Frozen II"/"Frozen 2" ->
"frozen2-2019"), so a recommender naming either spelling hits the target. The id depends on the title alone,
never on which other titles are loaded, so adding a file (the official test split) never renames an item.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path
from typing import Any

from reges.data import DialogueFile, merge_turns
from reges.errors import CatalogError, DataError
from reges.io import iter_jsonl, read_text
from reges.records import Dialogue, Role
from reges.titles import normalize_title, title_id

logger = logging.getLogger(__name__)

ROLES: dict[str, Role] = {"SEEKER": "user", "RECOMMENDER": "assistant"}
TSV_COLUMNS = ("dialog_id", "speaker", "text", "movies")


def _role(speaker: Any, where: str) -> Role:
    role = ROLES.get(str(speaker).strip().upper())
    if role is None:
        raise DataError(f"{where}: speaker {speaker!r} is neither SEEKER nor RECOMMENDER; fix that row")
    return role


def _item_ids(titles_in: list[str], where: str, titles: dict[str, str]) -> list[str]:
    """Turn each mentioned title into its item id (`title_id`); record id -> title (first spelling seen)."""
    item_ids = []
    for raw_title in titles_in:
        title = normalize_title(raw_title)
        if not title:
            continue
        try:
            item_id = title_id(title)
        except CatalogError as e:
            raise DataError(f"{where}: {e}") from None
        titles.setdefault(item_id, title)
        item_ids.append(item_id)
    return item_ids


def clean_tsv_text(text: str) -> str:
    """Undo the TSV's escapes: the authors wrote `"` as QUOTATION_MARK, and some apostrophes were lost to
    U+FFFD replacement characters (the UniCRS copy drops both the same way)."""
    return text.replace("QUOTATION_MARK", '"').replace("\ufffd", "")


def load_inspired_tsv(path: str | Path) -> DialogueFile:
    """Load an original INSPIRED `dev.tsv`/`test.tsv`/`train.tsv`.

    Returns:
        The dialogues in order of first appearance, with ids from `dialog_id`, and item ids (`title_id`) from
        the `movies` column.

    Raises:
        DataError: Missing file, missing columns, a row with the wrong number of fields, an unknown speaker,
            or a dialogue that is split in two places of the file.

    Example:
        >>> f = load_inspired_tsv("dialog_data/dev.tsv")
        >>> f.dialogues[0].turns[0].role
        'assistant'
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"INSPIRED file not found: {path}; check data.train_files/dev_files/test_files")
    csv.field_size_limit(sys.maxsize)
    titles: dict[str, str] = {}
    rows_by_dialogue: dict[str, list[tuple[Role, str, list[str]]]] = {}
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: file is empty; expected the INSPIRED TSV header")
        missing = [c for c in TSV_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}:1: the header lacks columns {missing} (has {header}); is this an INSPIRED "
                            "dialog_data TSV? Check data.format")
        col = {c: header.index(c) for c in TSV_COLUMNS}
        last_id = None
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{where}: expected {len(header)} tab-separated fields, got {len(row)}; "
                                "fix the tabs in that row")
            dialogue_id = row[col["dialog_id"]].strip()
            if not dialogue_id:
                raise DataError(f"{where}: empty dialog_id; fix that row")
            if dialogue_id != last_id and dialogue_id in rows_by_dialogue:
                raise DataError(f"{where}: rows of dialog {dialogue_id} are not contiguous, so turn order is "
                                "ambiguous; keep each dialogue's rows together in utterance order")
            last_id = dialogue_id
            movies = [m for m in row[col["movies"]].split(";") if m.strip()]
            rows_by_dialogue.setdefault(dialogue_id, []).append(
                (_role(row[col["speaker"]], where), clean_tsv_text(row[col["text"]]), _item_ids(movies, where, titles))
            )
    dialogues = [Dialogue(dialogue_id=d, turns=merge_turns(rows)) for d, rows in rows_by_dialogue.items()]
    logger.info("%s: %d INSPIRED dialogues (original TSV)", path, len(dialogues))
    return DialogueFile(path=path, variant="inspired-tsv", dialogues=dialogues, titles=titles)


def load_inspired_unicrs(path: str | Path, id_prefix: str | None = None) -> DialogueFile:
    """Load INSPIRED in the UniCRS jsonl form (one JSON array of utterances per line).

    Args:
        path: E.g. `train_data_dbpedia.jsonl`.
        id_prefix: Dialogue ids are f"{id_prefix}-{line:06d}". Default: the file name up to its first "_"
            or "." ("train_data_dbpedia.jsonl" -> "train"), so ids stay the same from run to run.

    Raises:
        DataError: Missing file, malformed line, an empty dialogue, a missing key or an unknown role
            (each names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"INSPIRED file not found: {path}; check data.train_files/dev_files/test_files")
    prefix = id_prefix if id_prefix is not None else path.name.split(".")[0].split("_")[0]
    titles: dict[str, str] = {}
    dialogues: list[Dialogue] = []
    for where, utterances in iter_jsonl(path):
        if not isinstance(utterances, list):
            raise DataError(f"{where}: expected a JSON array of utterances, got {type(utterances).__name__}; "
                            "is this the UniCRS INSPIRED form? Check data.format")
        if not utterances:
            raise DataError(f"{where}: dialogue has no utterances; remove that line")
        messages: list[tuple[Role, str, list[str]]] = []
        for u in utterances:
            if not isinstance(u, dict) or not {"role", "text", "movie"} <= set(u):
                raise DataError(f"{where}: each utterance needs role, text and movie keys, got {u!r:.200}")
            if not isinstance(u["movie"], list):
                raise DataError(f"{where}: `movie` must be a list of titles, got {u['movie']!r}")
            messages.append((_role(u["role"], where), str(u["text"] or ""),
                             _item_ids([str(m) for m in u["movie"]], where, titles)))
        lineno = int(where.rsplit(":", 1)[1])  # ids number dialogues by their line in the file
        dialogues.append(Dialogue(dialogue_id=f"{prefix}-{lineno:06d}", turns=merge_turns(messages)))
    logger.info("%s: %d INSPIRED dialogues (UniCRS jsonl)", path, len(dialogues))
    return DialogueFile(path=path, variant="inspired-unicrs", dialogues=dialogues, titles=titles)


def load_inspired(path: str | Path) -> DialogueFile:
    """Load an INSPIRED file in either form: a first line starting with "[" means UniCRS jsonl, else TSV."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"INSPIRED file not found: {path}; check data.train_files/dev_files/test_files")
    first = next((line for line in read_text(path).splitlines() if line.strip()), "")
    return load_inspired_unicrs(path) if first.lstrip().startswith("[") else load_inspired_tsv(path)
