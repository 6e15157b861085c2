"""Another dataset's dialogues as evidence for this catalog, matched by title: co-mentions and encoder pairs.

Why: the co-mention prior needs many dialogues. INSPIRED has 801 train dialogues (co-mention R@50 0.168 alone);
ReDial's train dialogues plus its lossy file are about 10k, and a film has the same title in both. So each of the
other dataset's dialogues is reduced to the set of titles it mentions, each title is matched to this catalog,
and the matched sets are counted like train dialogues (`train_retriever.cross_dataset`).

The dialogue encoder is the other signal that needs many dialogues (on INSPIRED it carries the ranking: tuned R@50
0.436 vs frozen 0.268, from 2,205 dialogue pairs). `cross_examples` turns the other dataset's ordered train
dialogues into recommendation examples whose targets are this catalog's items (`train_retriever.cross_pairs`), so
the encoder also learns from (their dialogue, the recommended film's card) pairs. The lossy file is not used there:
its turn order is lost, and the encoder reads ordered dialogue text.

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
from reges.data.examples import build_examples, combine_files, load_dialogue_file
from reges.data.lossy import lossy_dialogues
from reges.data.redial import read_movie_names
from reges.errors import DataError
from reges.records import CROSS_DIALOGUE_PREFIX, Dialogue, Item, RecExample, Turn
from reges.titles import parse_title, title_id

logger = logging.getLogger(__name__)

ID_PREFIX = CROSS_DIALOGUE_PREFIX


def _check_files(cfg: CrossDatasetConfig) -> None:
    for path in [*cfg.files, cfg.movie_names_file, cfg.lossy_file]:
        if path and not Path(path).is_file():
            raise DataError(f"train_retriever.cross_dataset names {path}, which does not exist; fix the path "
                            "(see ../shared/data/SOURCES.md) or set train_retriever.cross_dataset: null")


def _ordered_dialogues(cfg: CrossDatasetConfig) -> tuple[list[Dialogue], dict[str, str], dict[str, str]]:
    """The other dataset's train files (turn order known), its id -> title map and ReDial's movie names."""
    movie_names = read_movie_names(cfg.movie_names_file) if cfg.movie_names_file else {}
    files: list[DialogueFile] = [load_dialogue_file(p, cfg.as_data_config(), movie_names) for p in cfg.files]
    dialogues, _ = combine_files(files)
    titles: dict[str, str] = dict(movie_names)
    for f in files:
        titles.update(f.titles)
    return dialogues, titles, movie_names


def cross_title_sets(cfg: CrossDatasetConfig) -> list[tuple[str, list[str]]]:
    """Each dialogue of the other dataset (train files, then the lossy file) as (id, sorted titles it mentions).

    An item id without a title (a custom file's ids, a ReDial @id missing from movies_with_mentions.csv) stands for
    its own title: custom data keyed by "Title (Year)" matches, anything else falls out as unmatched.

    Raises:
        DataError: A file is missing or cannot be parsed.
    """
    _check_files(cfg)
    dialogues, titles, movie_names = _ordered_dialogues(cfg)
    if cfg.lossy_file:
        dialogues = dialogues + lossy_dialogues(Path(cfg.lossy_file), [], movie_names, known=dialogues)
    out = []
    for d in dialogues:
        named = sorted({titles.get(i, i) for t in d.turns for i in t.item_ids})
        if named:
            out.append((f"{ID_PREFIX}{d.dialogue_id}", named))
    return out


class TitleMatcher:
    """Maps another dataset's titles to this catalog's item ids (exact `title_id`, then a unique year-less key)
    and counts each outcome."""

    def __init__(self, items: Iterable[Item]) -> None:
        self.exact, self.loose = title_lookup(items)
        self.counts: Counter[str] = Counter()

    def match(self, title: str) -> str | None:
        """The item id `title` names in this catalog, or None (no item, or several: never guessed)."""
        self.counts["titles"] += 1
        item_id = self.exact.get(title_id(title))
        if item_id is not None:
            self.counts["matched_exact"] += 1
            return item_id
        item_id = self.loose.get(_year_less(title))
        self.counts["matched_year_less" if item_id is not None else "unmatched"] += 1
        return item_id

    def stats(self) -> dict[str, int]:
        return {k: self.counts[k] for k in ("titles", "matched_exact", "matched_year_less", "unmatched")}


def cross_examples(cfg: CrossDatasetConfig, items: Iterable[Item]) -> tuple[list[RecExample], dict[str, int]]:
    """The other dataset's ordered train dialogues as recommendation examples over this catalog.

    Each recommending turn of theirs becomes an example (`data.examples.build_examples`) whose targets are the
    films it names that this catalog has (matched by title like the co-mention sets); turns naming none of them are
    dropped. The context keeps their text as written and its item ids mapped where they match (unmatched mentions
    stay in the text only). Only `cfg.files` are read: never the lossy file (order lost) nor any test file.

    Returns:
        (examples with dialogue ids prefixed by `CROSS_DIALOGUE_PREFIX`, counts: examples, examples_kept, targets,
        targets_matched, and the title-match counts of the distinct films their dialogues name).

    Raises:
        DataError: A file is missing or cannot be parsed.
    """
    _check_files(cfg)
    dialogues, titles, _ = _ordered_dialogues(cfg)
    matcher = TitleMatcher(items)
    cache: dict[str, str | None] = {}

    def mapped(ids: Iterable[str]) -> list[str]:
        out: list[str] = []
        for i in ids:
            if i not in cache:
                cache[i] = matcher.match(titles.get(i, i))
            if cache[i] is not None and cache[i] not in out:
                out.append(cache[i])  # type: ignore[arg-type]
        return out

    examples: list[RecExample] = []
    counts: Counter[str] = Counter()
    for d in dialogues:
        for t in d.turns:
            if t.role == "assistant" and t.item_ids:
                counts["examples"] += 1
                counts["targets"] += len(set(t.item_ids))
        turns = [Turn(t.role, t.content, mapped(t.item_ids)) for t in d.turns]
        kept = build_examples(Dialogue(f"{ID_PREFIX}{d.dialogue_id}", turns), {})
        counts["targets_matched"] += sum(len(ex.target_item_ids) for ex in kept)
        examples.extend(kept)
    stats = {"examples": counts["examples"], "examples_kept": len(examples), "targets": counts["targets"],
             "targets_matched": counts["targets_matched"], **matcher.stats()}
    logger.info("cross-dataset examples: %d of %d kept (%d of %d targets matched)", len(examples),
                counts["examples"], counts["targets_matched"], counts["targets"])
    return examples, stats


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
    matcher = TitleMatcher(items)
    dialogues: list[Dialogue] = []
    for dialogue_id, titles in sets:
        ids: list[str] = []
        for t in titles:
            item_id = matcher.match(t)
            if item_id is not None and item_id not in ids:
                ids.append(item_id)
        if ids:
            dialogues.append(Dialogue(dialogue_id, [Turn("user", "", sorted(ids))]))
    stats = {"dialogues": len(sets), "dialogues_kept": len(dialogues), **matcher.stats()}
    logger.info("cross-dataset dialogues: %d of %d kept; titles matched exactly %d, by year-less key %d, "
                "unmatched %d", len(dialogues), len(sets), stats["matched_exact"], stats["matched_year_less"],
                stats["unmatched"])
    return dialogues, stats
