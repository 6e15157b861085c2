"""Another dataset's dialogues as co-mention evidence for this catalog, matched by title.

Why: the co-mention prior needs many dialogues. INSPIRED has 801 train dialogues (co-mention R@50 0.168 alone);
ReDial's train dialogues plus its lossy file are about 10k, and a film has the same title in both. So each of the
other dataset's dialogues is reduced to the set of titles it mentions, each title is matched to this catalog,
and the matched sets are counted like train dialogues (`train_retriever.cross_dataset`).

Matching is exact on `titles.title_id` (case, articles, punctuation and roman numerals do not matter; the year
does). A title without a year in the other dataset, or one whose year matches nothing, falls back to the year-less
key when exactly one catalog item has it. A key shared by several catalog items (two films of one title and
year in a raw catalog) is skipped, never guessed. The counts of each outcome go into the stage manifest.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from reges.config import CrossDatasetConfig
from reges.data import DialogueFile
from reges.data.examples import combine_files, load_dialogue_file
from reges.data.lossy import lossy_dialogues
from reges.data.redial import read_movie_names
from reges.errors import DataError
from reges.records import CROSS_DIALOGUE_PREFIX, Dialogue, Item, Turn
from reges.titles import parse_title, title_id

logger = logging.getLogger(__name__)

ID_PREFIX = CROSS_DIALOGUE_PREFIX


def cross_title_sets(cfg: CrossDatasetConfig) -> list[tuple[str, list[str]]]:
    """Each dialogue of the other dataset (train files, then the lossy file) as (id, sorted titles it mentions).

    An item id without a title (a custom file's ids, a ReDial @id missing from movies_with_mentions.csv) stands for
    its own title: custom data keyed by "Title (Year)" matches, anything else falls out as unmatched.

    Raises:
        DataError: A file is missing or cannot be parsed.
    """
    for path in [*cfg.files, cfg.movie_names_file, cfg.lossy_file]:
        if path and not Path(path).is_file():
            raise DataError(f"train_retriever.cross_dataset names {path}, which does not exist; fix the path "
                            "(see ../shared/data/SOURCES.md) or set train_retriever.cross_dataset: null")
    movie_names = read_movie_names(cfg.movie_names_file) if cfg.movie_names_file else {}
    files: list[DialogueFile] = [load_dialogue_file(p, cfg.as_data_config(), movie_names) for p in cfg.files]
    dialogues, _ = combine_files(files)
    titles: dict[str, str] = dict(movie_names)
    for f in files:
        titles.update(f.titles)
    if cfg.lossy_file:
        dialogues = dialogues + lossy_dialogues(Path(cfg.lossy_file), [], movie_names, known=dialogues)
    out = []
    for d in dialogues:
        named = sorted({titles.get(i, i) for t in d.turns for i in t.item_ids})
        if named:
            out.append((f"{ID_PREFIX}{d.dialogue_id}", named))
    return out


def _year_less(title: str) -> str:
    return title_id(parse_title(title)[0] or title)


def title_lookup(items: Iterable[Item]) -> tuple[dict[str, str], dict[str, str]]:
    """(title_id -> item id, year-less key -> item id), each keeping only keys that name exactly one item."""
    exact: dict[str, set[str]] = defaultdict(set)
    loose: dict[str, set[str]] = defaultdict(set)
    for it in items:
        exact[title_id(it.title)].add(it.item_id)
        loose[_year_less(it.title)].add(it.item_id)
    return ({k: next(iter(v)) for k, v in exact.items() if len(v) == 1},
            {k: next(iter(v)) for k, v in loose.items() if len(v) == 1})


def match_title_sets(sets: Sequence[tuple[str, list[str]]], items: Iterable[Item]
                     ) -> tuple[list[Dialogue], dict[str, int]]:
    """The sets as one-turn dialogues over this catalog's item ids; unmatched titles are dropped.

    Returns:
        (dialogues with at least one matched item, counts: dialogues, dialogues_kept, titles, matched_exact,
        matched_year_less, unmatched).
    """
    exact, loose = title_lookup(items)
    counts: Counter[str] = Counter()
    dialogues: list[Dialogue] = []
    for dialogue_id, titles in sets:
        ids: list[str] = []
        for t in titles:
            counts["titles"] += 1
            item_id = exact.get(title_id(t))
            if item_id is not None:
                counts["matched_exact"] += 1
            else:
                item_id = loose.get(_year_less(t))
                counts["matched_year_less" if item_id is not None else "unmatched"] += 1
            if item_id is not None and item_id not in ids:
                ids.append(item_id)
        if ids:
            dialogues.append(Dialogue(dialogue_id, [Turn("user", "", sorted(ids))]))
    stats = {"dialogues": len(sets), "dialogues_kept": len(dialogues),
             **{k: counts[k] for k in ("titles", "matched_exact", "matched_year_less", "unmatched")}}
    logger.info("cross-dataset dialogues: %d of %d kept; titles matched exactly %d, by year-less key %d, "
                "unmatched %d", len(dialogues), len(sets), stats["matched_exact"], stats["matched_year_less"],
                stats["unmatched"])
    return dialogues, stats
