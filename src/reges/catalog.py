"""The `catalog` stage: one `Item` per recommendable thing, with a short text card for retrieval and prompts.

Three input formats (`catalog.format`):
- "redial": `id2info.json` (ReDial movieId -> name, genre, director, writer, star, plot, imdb_id) plus
  `movies_with_mentions.csv`, whose ids missing from id2info get a title-only card (`meta.source="names_only"`).
- "inspired": INSPIRED has no item table, so the catalog is assembled: every title the `data` stage found in
  the dialogues (item id = `title_id(title)`, one id for all spellings of a film), the 1,096 movies of CFCRS
  `kg.json` (star/director/genre), merged where titles match, and plots (plus missing attributes) borrowed
  from id2info.json where titles match.
- "custom": a JSONL of `{"item_id"?, "title", "text"?, "year"?, "meta"?}` records. When the `data` stage
  read custom dialogues, every item id they mention must be in the catalog (`check_mentioned_items`): the
  data stage never sees the items file, so this is where a typo in an id is caught.
`catalog.extra_items_files` (custom format) are appended to any of them, e.g. to add titles a test split
mentions. Titles are normalised and matched only through `reges.titles`.

Cleaning (redial and inspired; `catalog.clean`): duplicate entries of one film are folded into one item, whose
`meta["alias_ids"]` keeps the other dataset ids, and a card that belongs to another film is dropped; see the
"Cleaning" section below and docs/results/catalog_cleaning.md. It reads the data stage's train dialogues (train
mention counts), so `reges data` must run first. Stages that read dataset ids map them with `alias_map`.

Outputs: `catalog/items.jsonl` (sorted by item_id), `catalog/stats.json`, `catalog/cleaning.jsonl` (when cleaned:
one row per contested card and per folded group), `catalog/manifest.json`.
"""

from __future__ import annotations

import difflib
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rapidfuzz import fuzz

from reges.config import CatalogConfig, PipelineConfig
from reges.data.lossy import LOSSY_DIALOGUES_FILE
from reges.data.redial import read_movie_names
from reges.errors import CatalogError, DataError
from reges.io import RunDir, iter_jsonl, now_iso, read_json, read_jsonl, write_json, write_jsonl
from reges.records import Dialogue, Item, RecExample, Turn, mentioned_item_ids
from reges.titles import (
    TitleMatcher,
    compact_key,
    format_title,
    match_one_to_one,
    normalize_title,
    split_year,
    title_from_slug,
    title_id,
    title_key,
    title_numbers,
    title_slug,
)

logger = logging.getLogger(__name__)

# Card labels for the attribute names the datasets use; any other field is labelled by its capitalised name.
CARD_LABELS: dict[str, str] = {
    "genre": "Genre", "director": "Director", "star": "Stars", "writer": "Writer", "plot": "Plot"
}
# Attributes counted as "people" in the stats.
PEOPLE_FIELDS = ("director", "star", "writer", "author")
LIST_FIELDS = ("genre", "director", "writer", "star")
CUSTOM_KEYS = ("item_id", "title", "text", "year", "meta")
KG_RELATIONS = ("star", "director", "genre")


# ----------------------------------------------------------------------------------------------------------
# Cards


def _field_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v).strip() for v in value if str(v).strip())
    if value is None:
        return ""
    return str(value).strip()


def build_card(title: str, meta: dict[str, Any], card_fields: list[str], max_chars: int) -> str:
    """The item's text card: "Title (Year). Genre: a, b. Director: X. Stars: Y, Z. Plot: ...".

    Short on purpose: it is what the retriever embeds and what the LLM prompts list per candidate. Fields
    come in `card_fields` order; empty ones are left out. A card longer than `max_chars` is cut at a word
    boundary and ends with "…".

    Example:
        >>> build_card("Inception (2010)", {"genre": ["action", "sci-fi"], "director": ["Christopher Nolan"]},
        ...            ["genre", "director", "plot"], 600)
        'Inception (2010). Genre: action, sci-fi. Director: Christopher Nolan.'
    """
    parts = [title.rstrip(".") + "."]
    for name in card_fields:
        text = _field_text(meta.get(name))
        if text:
            label = CARD_LABELS.get(name, name.replace("_", " ").capitalize())
            parts.append(f"{label}: {text.rstrip('.')}.")
    return cut_text(" ".join(parts), max_chars)


def cut_text(text: str, max_chars: int) -> str:
    """Cut `text` to at most `max_chars` characters at a word boundary, marking the cut with "…"."""
    if len(text) <= max_chars:
        return text
    head = text[: max_chars - 1]
    if " " in head:
        head = head[: head.rindex(" ")]
    return head.rstrip(" ,.;:") + "…"


def _has_card_fields(meta: dict[str, Any], card_fields: list[str]) -> bool:
    return any(_field_text(meta.get(name)) for name in card_fields)


def _clean_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Drop empty attributes and strip strings, so `meta.get(x)` is truthy exactly when x is known."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, list):
            value = [v.strip() if isinstance(v, str) else v for v in value]
            value = [v for v in value if v not in ("", None)]
        elif isinstance(value, str):
            value = value.strip()
        if value in ("", None, []):
            continue
        out[key] = value
    return out


def make_item(item_id: str, title: str, meta: dict[str, Any], cfg: CatalogConfig, text: str = "") -> Item:
    """An Item with a normalised "Title (Year)", its year, cleaned meta and a card.

    `text`, when given, is the card (custom catalogs write their own), with "Title (Year). " put in front
    unless it already starts with the title: a user who names the item must be able to retrieve it.
    Otherwise the card is built from `meta` and `cfg.card_fields`.
    """
    name, year = split_year(title)
    meta = _clean_meta(meta)
    display = format_title(name, year)
    text = normalize_title(text)
    if text:
        card = text if text.casefold().startswith(name.casefold()) else f"{display.rstrip('.')}. {text}"
        card = cut_text(card, cfg.max_card_chars)
    else:
        card = build_card(display, meta, cfg.card_fields, cfg.max_card_chars)
    return Item(item_id=item_id, title=display, text=card, year=year, meta=meta)


# ----------------------------------------------------------------------------------------------------------
# Readers (file -> plain records)


def read_id2info(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read iEvaLM's id2info.json: ReDial movieId -> {name, genre, plot, director, writer, star, imdb_id}."""
    info = read_json(path)
    if not isinstance(info, dict):
        raise DataError(f"{path}: expected a JSON object of movieId -> movie info, got {type(info).__name__}")
    for movie_id, record in info.items():
        if not isinstance(record, dict) or not str(record.get("name", "")).strip():
            raise DataError(
                f"{path}: movie {movie_id!r} has no 'name'; every record needs one (is this iEvaLM id2info.json?)"
            )
    return {str(k): v for k, v in info.items()}


@dataclass
class KgMovie:
    """One CFCRS kg.json movie with its attributes resolved to names."""

    entity_id: str
    title: str
    star: list[str] = field(default_factory=list)
    director: list[str] = field(default_factory=list)
    genre: list[str] = field(default_factory=list)


def read_kg(kg_dir: str | Path) -> list[KgMovie]:
    """Read CFCRS kg.json + entity2id.json + relation2id.json into movies with star/director/genre names.

    kg.json maps a head entity id to [[relation id, tail entity id], ...]; attribute order is kept as the
    file gives it.
    """
    kg_dir = Path(kg_dir)
    if not kg_dir.is_dir():
        raise DataError(f"catalog.kg_dir {kg_dir} is not a folder; point it at CFCRS data/inspired/")
    kg = read_json(kg_dir / "kg.json")
    entity2id = read_json(kg_dir / "entity2id.json")
    relation2id = read_json(kg_dir / "relation2id.json")
    names = {int(v): k for k, v in entity2id.items()}
    relations = {int(v): k for k, v in relation2id.items()}
    movies: list[KgMovie] = []
    for head, edges in kg.items():
        if int(head) not in names:
            raise DataError(f"{kg_dir / 'kg.json'}: entity {head} is not in entity2id.json")
        movie = KgMovie(entity_id=str(head), title=normalize_title(names[int(head)]))
        for relation_id, tail in edges:
            relation = relations.get(int(relation_id))
            if relation not in KG_RELATIONS:
                raise DataError(
                    f"{kg_dir / 'kg.json'}: relation {relation_id} ({relation!r}) is not one of {KG_RELATIONS}"
                )
            value = names[int(tail)].strip()
            values = getattr(movie, relation)
            if value and value not in values:
                values.append(value)
        movies.append(movie)
    return movies


def _suggest(key: str, known: tuple[str, ...]) -> str:
    near = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(known)}"


def read_custom_items(path: str | Path, cfg: CatalogConfig) -> list[tuple[Item, str]]:
    """Read a custom items JSONL: `{"item_id"?, "title", "text"?, "year"?, "meta"?}` per line.

    `item_id` defaults to `title_slug(title)` ("Dune (1965)" -> "dune-1965"), not `title_id`: custom ids are
    the user's own, read and typed in dialogue files, so they stay readable; spellings are the user's to
    keep consistent. `text` is the card; without it the card is built from the
    `meta` fields named in `catalog.card_fields`, and a record with neither is an error (an item nobody can
    retrieve). Unknown keys are errors too (a typo like "titel" would otherwise drop the title).

    Returns:
        (item, origin) pairs; origin is "file:line" for error messages about duplicates.
    """
    out: list[tuple[Item, str]] = []
    path = Path(path)
    for lineno, record in _numbered_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        for key in record:
            if key not in CUSTOM_KEYS:
                hint = _suggest(key, CUSTOM_KEYS)
                raise DataError(f"{where}: unknown key {key!r}{hint} (put extra fields in 'meta')")
        title = record.get("title")
        if not isinstance(title, str) or not normalize_title(title):
            raise CatalogError(f"{where}: a catalog record without title ({record!r}); every item needs a 'title'")
        meta = record.get("meta") or {}
        if not isinstance(meta, dict):
            raise DataError(f"{where}: 'meta' must be an object, got {meta!r}")
        text = record.get("text") or ""
        if not isinstance(text, str):
            raise DataError(f"{where}: 'text' must be a string, got {text!r}")
        name, title_year = split_year(title)
        year = record.get("year")
        if year is not None and (not isinstance(year, int) or isinstance(year, bool)):
            raise DataError(f"{where}: 'year' must be an integer, got {year!r}")
        if year is not None and title_year is not None and year != title_year:
            raise CatalogError(
                f"{where}: title {title!r} says {title_year} but 'year' says {year}; make them agree or drop one"
            )
        year = year if year is not None else title_year
        item_id = record.get("item_id")
        if item_id is None:
            item_id = title_slug(format_title(name, year))
        if not isinstance(item_id, (str, int)) or isinstance(item_id, bool) or not str(item_id).strip():
            raise DataError(f"{where}: 'item_id' must be a non-empty string, got {item_id!r}")
        if not text.strip() and not _has_card_fields(meta, cfg.card_fields):
            raise CatalogError(
                f"{where}: a catalog record without text: item {item_id!r} has no 'text' and none of the card "
                f"fields {cfg.card_fields} in 'meta'; add a 'text' or those fields"
            )
        item = make_item(str(item_id).strip(), format_title(name, year), meta, cfg, text=text)
        out.append((item, where))
    return out


def _numbered_jsonl(path: Path) -> list[tuple[int, Any]]:
    """JSONL rows with their line numbers, so record errors can name file:line (read_jsonl gives rows only)."""
    if not path.is_file():
        raise DataError(f"file not found: {path}; check catalog.items_file / catalog.extra_items_files")
    return [(int(where.rsplit(":", 1)[1]), row) for where, row in iter_jsonl(path)]


def read_items(path: str | Path) -> list[Item]:
    """Read a catalog `items.jsonl` written by this stage, as it is (`read_catalog` also checks it)."""
    return [Item.from_dict(d) for d in read_jsonl(path)]


def read_catalog(path: str | Path) -> list[Item]:
    """Read `catalog/items.jsonl` for indexing and serving, refusing an empty catalog, duplicate ids and empty cards.

    Raises:
        CatalogError: no items, a duplicated item_id, or an item whose text card is empty.
    """
    items = read_items(path)
    if not items:
        raise CatalogError(f"{path} holds no items; run `reges catalog` on a non-empty item source")
    seen: set[str] = set()
    for item in items:
        if item.item_id in seen:
            raise CatalogError(f"{path}: item_id {item.item_id!r} appears twice; item ids must be unique")
        if not item.text.strip():
            raise CatalogError(f"{path}: item {item.item_id!r} has an empty text card; every item needs one")
        seen.add(item.item_id)
    return items


def load_catalog(run_dir: RunDir) -> list[Item]:
    """The catalog of a run (raises StageNotReadyError when `reges catalog` has not finished)."""
    return read_items(run_dir.require("catalog") / "items.jsonl")


# ----------------------------------------------------------------------------------------------------------
# Core: records -> items (no file I/O)


def redial_items(info: dict[str, dict[str, Any]], names: dict[str, str], cfg: CatalogConfig) -> list[Item]:
    """ReDial items: every id of id2info and of movies_with_mentions.

    id2info gives the attributes and the title; ids only in the names file get a title-only card and
    `meta.source="names_only"` (341 of 6,924 in the real files), so that every movie a dialogue mentions
    is in the catalog.
    """
    items: list[Item] = []
    for movie_id, record in info.items():
        meta = {k: record.get(k) for k in (*LIST_FIELDS, "plot", "imdb_id")}
        meta["source"] = "id2info"
        items.append(make_item(movie_id, str(record["name"]), meta, cfg))
    for movie_id, name in names.items():
        if movie_id not in info:
            items.append(make_item(movie_id, name, {"source": "names_only"}, cfg))
    return items


@dataclass
class InspiredInputs:
    """What the INSPIRED catalog is assembled from.

    Attributes:
        dialogue_titles: item_id (`title_id`) -> title, for every item the dialogues mention.
        kg: CFCRS kg.json movies.
        info: id2info.json records (plots and missing attributes are borrowed from it); empty to skip.
    """

    dialogue_titles: dict[str, str]
    kg: list[KgMovie]
    info: dict[str, dict[str, Any]] = field(default_factory=dict)


def inspired_items(inputs: InspiredInputs, cfg: CatalogConfig) -> tuple[list[Item], dict[str, Any]]:
    """INSPIRED items: dialogue titles merged with kg.json attributes and id2info plots.

    1. Every dialogue item keeps its id (the `title_id` the data stage gave it) and title.
    2. Each kg movie is matched to the dialogue items (`match_one_to_one`: an item goes to at most one kg
       movie, the best match); a match adds star/director/genre. A kg movie left without a match gets the
       id `title_id(kg title)`: when an item without kg attributes already has that id (the same key and
       year, e.g. two kg spellings tied on it, so matching gave it to neither), the attributes go to it;
       when it has kg attributes already, the kg movie is a duplicate and is dropped (counted and logged);
       otherwise it is a new item.
    3. Each item is matched to id2info names (one to one again): it borrows the plot and imdb_id, and
       genre/director/star/writer it does not have yet.

    Returns:
        (items, stats) where stats counts every step, for `stats.json`.
    """
    records: dict[str, dict[str, Any]] = {}
    for item_id, title in inputs.dialogue_titles.items():
        records[item_id] = {"title": title, "meta": {}, "sources": ["dialogues"]}

    dialogue_matcher = TitleMatcher(
        ((i, r["title"]) for i, r in records.items()), fuzzy_threshold=cfg.fuzzy_threshold
    )
    kg_by_id = {m.entity_id: m for m in inputs.kg}
    kg_to_item = match_one_to_one({m.entity_id: m.title for m in inputs.kg}, dialogue_matcher)
    merged = merged_by_id = new = collided = 0
    for entity_id in sorted(kg_by_id, key=int):
        movie = kg_by_id[entity_id]
        attrs = {"star": movie.star, "director": movie.director, "genre": movie.genre}
        item_id = kg_to_item.get(entity_id)
        if item_id is not None:
            merged += 1
            if split_year(records[item_id]["title"])[1] is None:  # "Akira ()" in a dialogue, "Akira (1988)" in kg
                records[item_id]["title"] = movie.title
        else:
            item_id = title_id(movie.title)
            if item_id in records and "kg_entity_id" in records[item_id]["meta"]:
                # The same id as an item that already has kg attributes: a kg duplicate; keep the first.
                collided += 1
                logger.warning("kg movie %r has the id of an item that already has kg attributes %r; kept those",
                               movie.title, item_id)
                continue
            if item_id in records:
                merged_by_id += 1
            else:
                records[item_id] = {"title": movie.title, "meta": {}, "sources": []}
                new += 1
        records[item_id]["meta"].update(attrs)
        records[item_id]["meta"]["kg_entity_id"] = entity_id
        records[item_id]["sources"].append("kg")

    borrowed = exact_plot = 0
    exact_names = {normalize_title(str(r["name"])) for r in inputs.info.values()}
    if inputs.info:
        info_matcher = TitleMatcher(
            ((i, str(r["name"])) for i, r in inputs.info.items()), fuzzy_threshold=cfg.fuzzy_threshold
        )
        to_info = match_one_to_one({i: r["title"] for i, r in records.items()}, info_matcher)
        for item_id, info_id in to_info.items():
            source = inputs.info[info_id]
            meta = records[item_id]["meta"]
            for name in LIST_FIELDS:
                if not meta.get(name) and source.get(name):
                    meta[name] = list(source[name])
            for name in ("plot", "imdb_id"):
                if source.get(name):
                    meta[name] = source[name]
            meta["redial_id"] = info_id
            records[item_id]["sources"].append("id2info")
            borrowed += 1
            exact_plot += normalize_title(records[item_id]["title"]) in exact_names

    items = []
    for item_id, r in records.items():
        r["meta"]["source"] = "+".join(r["sources"])
        items.append(make_item(item_id, r["title"], r["meta"], cfg))
    kg_titles = [m.title for m in inputs.kg]
    stats = {
        "dialogue_items": len(inputs.dialogue_titles),
        "kg_movies": len(inputs.kg),
        "kg_merged_into_dialogue_items": merged,
        "kg_merged_by_id": merged_by_id,
        "kg_new_items": new,
        "kg_id_collisions": collided,
        "kg_titles_exactly_in_id2info": sum(t in exact_names for t in kg_titles),
        "items_matched_to_id2info": borrowed,
        "items_matched_to_id2info_exactly": exact_plot,
    }
    return items, stats


def check_unique(items: list[tuple[Item, str]]) -> list[Item]:
    """Refuse two items with one id: name the id, both sources and the fix."""
    seen: dict[str, str] = {}
    out = []
    for item, origin in items:
        if item.item_id in seen:
            raise CatalogError(
                f"duplicate item id {item.item_id!r}: in {seen[item.item_id]} and in {origin}; give one of them "
                "another item_id (or drop the duplicate record from the extra items file)"
            )
        seen[item.item_id] = origin
        out.append(item)
    return out


def catalog_stats(items: list[Item]) -> dict[str, Any]:
    """Counts for stats.json: items, how many have genre / people / plot, sources, card lengths."""
    lengths = sorted(len(i.text) for i in items)
    titles = Counter(i.title for i in items)
    return {
        "items": len(items),
        "with_year": sum(i.year is not None for i in items),
        "with_genre": sum(bool(i.meta.get("genre")) for i in items),
        "with_people": sum(any(i.meta.get(f) for f in PEOPLE_FIELDS) for i in items),
        "with_plot": sum(bool(i.meta.get("plot")) for i in items),
        "by_source": dict(sorted(Counter(str(i.meta.get("source", "")) for i in items).items())),
        "shared_titles": sum(1 for c in titles.values() if c > 1),
        "card_chars_mean": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
        "card_chars_max": lengths[-1] if lengths else 0,
    }


# ----------------------------------------------------------------------------------------------------------
# Cleaning: one item per film, and every card on the film it describes
#
# ReDial's movie list was built by crowd workers: one film can have several ids ("Frozen" and "Frozen (2013)", two
# "Frozen (2010)"), and id2info.json, looked up per id, sometimes gives an id another film's card ("It (1990)"
# carries Goodfellas' director, stars, genres and plot; "It (2004)" Mean Girls'). Duplicates split the co-mention
# counts of one film between ids and let a film the user named come back under its other id; a foreign card makes
# the retriever and the Item Expert describe the wrong film. `clean_catalog` fixes both, in this order:
#
# 1. Foreign cards. A card is identified by its `imdb_id` (every id2info card has one; kg-only cards: the director
#    and star set). Items sharing a card are grouped into "readings": one film by title (`_same_title`: the same
#    compact key, or two names of one film) and year (within NEAR_YEARS).
#    Year-less items join no reading. With two or more readings, the card describes at most one of them; its owner
#    is decided by the first of these that separates the readings:
#    a. careers: for each person of the card (directors, stars) with other dated films in the catalog (other cards),
#       the years from the reading's year to their nearest one (capped at CAREER_CAP); a reading whose mean over the
#       people is CAREER_MARGIN years or more above the best reading's is out. This separates remakes (a 2010 cast
#       on a 1984 title, a 1931 cast on a 2004 one).
#    b. distinct titles: among the readings left, the one whose title occurs (as whole words) in fewest other
#       catalog titles, its own numbered sequels aside. A search for a generic title ("It", "Spider", "The Jungle")
#       returns some popular film; a distinctive title ("Goodfellas", "The Jungle Book") is not mislinked.
#    c. mentions: among the readings left, the one mentioned most in the training dialogues (ReDial workers who
#       picked the wrong year of a film mostly meant the card's film, so its mentions follow the card).
#    Every other reading loses the card (its `CARD_META` keys), and so does every reading when nothing decides. A
#    year-less item whose title is a numbered sequel or original of the owner's ("Home Alone 4" with the card of
#    "Home Alone (1990)") loses it too. The item keeps its title; its text card is rebuilt from what is left, and
#    `meta["card_dropped"]` says whose card it was.
# 2. Folding. Items with the same compact title key are one film when their years are within NEAR_YEARS (or one has
#    none) and their cards agree (the same card, or a shared director or star); an item without a card folds only
#    into an item of the same year, or, without a year, into the only film of that title. Items of one card under
#    two names of one film (`_same_title`) fold too, when their years are near, or one has none and the card has
#    no other dated film ("Anchorman" into "Anchorman: The Legend of Ron Burgundy (2004)"). Each group keeps one item
#    (a card first, then a year, then the most train mentions, then the smallest id); the other ids are listed in
#    its `meta["alias_ids"]`, so every dataset id still resolves (`alias_map`, `canonical_example`), and card
#    attributes it lacks are taken from the others (its text card rebuilt).
#
# Films that merely share a title (remakes, "The Notebook (2004)" and "(2013)") stay apart: linking picks the most
# mentioned one for a typed title (`reges.linking`), and the recommender excludes every film of a named title.

# The meta keys a metadata source fills for one film (its "card"); dropped together when the card is another film's.
CARD_META: tuple[str, ...] = ("genre", "director", "star", "writer", "plot", "imdb_id")
# Release years of one film differ by at most this much across sources (festival vs release, dataset noise).
NEAR_YEARS = 1
# Two spellings of one title (same year): "Killer Klowns" / "Killer Clowns", "Logan Lucky" / "Lucky Logan".
ALIAS_TITLE_SCORE = 90.0
# Careers: a reading whose year is, on average over the card's people, this many years further from their other films
# than the best reading's is not the card's film (a 2010 remake's cast on a 1984 title). Distances are capped.
CAREER_MARGIN = 5.0
CAREER_CAP = 20
# Words that do not make two titles share content ("Revenge of the Bridesmaids" vs "Return of the Living Dead").
_FUNCTION_WORDS = frozenset({"the", "a", "an", "of", "and", "in", "on", "to", "for", "at", "by", "with", "from"})


def card_fingerprint(meta: dict[str, Any]) -> str | None:
    """What identifies a film's card: its imdb_id, else its director and star set (2+ stars); None without one."""
    imdb_id = str(meta.get("imdb_id") or "").strip()
    if imdb_id:
        return f"imdb:{imdb_id}"
    directors = sorted(str(d) for d in meta.get("director") or [])
    stars = sorted(str(s) for s in meta.get("star") or [])
    if directors and len(stars) >= 2:
        return "people:" + "|".join(directors) + "/" + "|".join(stars)
    return None


def _people(meta: dict[str, Any]) -> set[str]:
    return {str(p) for name in ("director", "star") for p in meta.get(name) or []}


def _has_card(meta: dict[str, Any]) -> bool:
    return any(meta.get(name) for name in CARD_META)


def _key(item: Item) -> str:
    """The matching key of an item's title, without its year ("the notebook (2004)" -> "notebook")."""
    return title_key(split_year(item.title)[0])


def alias_map(items: Iterable[Item]) -> dict[str, str]:
    """Folded dataset id -> the id of the item it was folded into (empty for an uncleaned catalog).

    Every stage that reads the data stage's dataset ids maps them through this (`read_examples` and
    `read_dialogues` of `reges.retrieval.retrieve` take it): distill, train-retriever (pairs, co-mention prior,
    lossy and neighbour examples), retrieve, mine, generate and evaluate, so that one film counts under one id
    (with `catalog.clean=true`, about 1.5 % of ReDial's train targets and mentions are named by a folded id).
    """
    out: dict[str, str] = {}
    for item in items:
        for alias in item.meta.get("alias_ids") or []:
            out[str(alias)] = item.item_id
    return out


def run_aliases(run_dir: str | Path) -> dict[str, str]:
    """`alias_map` of a run directory's catalog (`catalog/items.jsonl`), for code that reads a finished run's data
    files (studies, benchmarks) and must see its ids as the stages did."""
    return alias_map(read_catalog(Path(run_dir) / "catalog" / "items.jsonl"))


def canonical_ids(item_ids: Iterable[str], aliases: Mapping[str, str]) -> list[str]:
    """`item_ids` with folded ids replaced by their item's id, in order of first occurrence, without repeats."""
    return list(dict.fromkeys(aliases.get(i, i) for i in item_ids))


def canonical_dialogue(dialogue: Dialogue, aliases: Mapping[str, str]) -> Dialogue:
    """The dialogue with every turn's item ids mapped through `aliases` (`alias_map`)."""
    if not aliases:
        return dialogue
    turns = [Turn(t.role, t.content, canonical_ids(t.item_ids, aliases)) for t in dialogue.turns]
    return Dialogue(dialogue.dialogue_id, turns)


def canonical_example(example: RecExample, aliases: Mapping[str, str]) -> RecExample:
    """The example with its context and targets mapped through `aliases`, and `target_mentioned` recomputed.

    Two targets that are one film become one target (its first title kept). A target is "mentioned" when the
    mapped context mentions it, so a film named under one id and recommended under another is not novel, as the
    data stage decides for one id (`reges.data.examples.build_examples`).
    """
    if not aliases:
        return example
    context = [Turn(t.role, t.content, canonical_ids(t.item_ids, aliases)) for t in example.context]
    named = mentioned_item_ids(context)
    targets: list[str] = []
    titles: list[str] = []
    for n, target in enumerate(example.target_item_ids):
        target = aliases.get(target, target)
        if target in targets:
            continue
        targets.append(target)
        if example.target_titles:
            titles.append(example.target_titles[n])
    return RecExample(
        example_id=example.example_id,
        dialogue_id=example.dialogue_id,
        context=context,
        target_item_ids=targets,
        target_mentioned=[t in named for t in targets],
        target_titles=titles,
        response=example.response,
    )


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return list(out.values())


def _same_title(a: Item, b: Item) -> bool:
    """Two names of one film, for items that share a card: the same compact key, or, with the same numbers, close
    keys ("Killer Klowns" / "Killer Clowns") or a shortened title, all of whose content words are in the other's
    ("Ace Ventura (1994)" / "Ace Ventura: Pet Detective (1994)", "Logan Lucky" / "Lucky Logan"). A year-less title
    must be the shortened one: "Anchorman" is "Anchorman: The Legend of Ron Burgundy (2004)", "Justice League: Doom"
    is not "Justice League (2017)"."""
    key_a, key_b = _key(a), _key(b)
    if compact_key(key_a) == compact_key(key_b):
        return True
    if title_numbers(key_a) != title_numbers(key_b):
        return False
    words_a, words_b = _content_words(key_a), _content_words(key_b)
    # the shortened title's words are all in the other title, and the other title has a year
    a_short, b_short = words_a <= words_b and b.year is not None, words_b <= words_a and a.year is not None
    if words_a and words_b and (a_short or b_short):
        return True
    return fuzz.ratio(key_a, key_b) >= ALIAS_TITLE_SCORE


def _readings(dated: list[Item]) -> list[list[Item]]:
    """Dated items sharing a card, grouped by title and year (see the section comment)."""
    uf = _UnionFind(len(dated))
    for i, a in enumerate(dated):
        for j in range(i + 1, len(dated)):
            b = dated[j]
            assert a.year is not None and b.year is not None
            if abs(a.year - b.year) <= NEAR_YEARS and _same_title(a, b):
                uf.union(i, j)
    return sorted(([dated[i] for i in g] for g in uf.groups()), key=lambda r: min(it.item_id for it in r))


@dataclass
class _Catalog:
    """What deciding a card's owner looks at, computed once per catalog."""

    careers: dict[str, list[tuple[str, int]]]  # person -> (card fingerprint, year) of their dated films
    keys: list[tuple[str, str]]  # (item id, title key) of every item, for whole-word containment
    mention_counts: Mapping[str, float]


def _career_distances(
    fingerprint: str, card: dict[str, Any], readings: list[list[Item]], cat: _Catalog
) -> list[float]:
    """Per reading, the mean over the card's people of the years to their nearest other film (capped); [] if none."""
    spans = []
    for person in sorted(_people(card)):
        years = [year for fp, year in cat.careers.get(person, []) if fp != fingerprint]
        if years:
            spans.append(years)
    if not spans:
        return []
    out = []
    for reading in readings:
        year = reading[0].year
        assert year is not None
        out.append(sum(min(CAREER_CAP, min(abs(year - y) for y in years)) for years in spans) / len(spans))
    return out


def _card_owner(
    fingerprint: str, group: list[Item], readings: list[list[Item]], cat: _Catalog
) -> tuple[int | None, str]:
    """Index of the reading a shared card belongs to, and the rule that decided it ("undecided": None)."""
    alive = list(range(len(readings)))
    distances = _career_distances(fingerprint, group[0].meta, readings, cat)
    if distances:
        best = min(distances)
        alive = [n for n in alive if distances[n] < best + CAREER_MARGIN]
        if len(alive) == 1:
            return alive[0], "careers"
    group_ids = {it.item_id for it in group}
    containing = {}
    for n in alive:
        key = _key(readings[n][0])
        containing[n] = sum(
            1 for item_id, other in cat.keys
            if item_id not in group_ids and f" {key} " in f" {other} " and not _sequel_pair(key, other)
        )
    ranked = sorted(alive, key=lambda n: containing[n])
    if containing[ranked[0]] < containing[ranked[1]]:
        return ranked[0], "distinct_title"
    mentions = {n: sum(cat.mention_counts.get(it.item_id, 0.0) for it in readings[n]) for n in alive}
    ranked = sorted(alive, key=lambda n: -mentions[n])
    if mentions[ranked[0]] > mentions[ranked[1]]:
        return ranked[0], "mentions"
    return None, "undecided"


def _sequel_pair(key_a: str, key_b: str) -> bool:
    """One title is the other with a (different) number: "home alone 4" and "home alone", "rocky 2" and "rocky 3"."""
    words_a = [t for t in key_a.split() if not t.isdigit()]
    words_b = [t for t in key_b.split() if not t.isdigit()]
    return words_a == words_b and title_numbers(key_a) != title_numbers(key_b)


def foreign_cards(
    items: list[Item], mention_counts: Mapping[str, float]
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Find the items whose card describes another film (rule 1 of the section comment).

    Args:
        items: The catalog.
        mention_counts: item id -> mentions in the training dialogues (the last tie-break).

    Returns:
        (item id -> reason, one record per card shared by two or more readings: the card, the readings, the owner
        and the rule that chose it, for `catalog/cleaning.jsonl`).
    """
    by_card: dict[str, list[Item]] = {}
    careers: dict[str, list[tuple[str, int]]] = {}
    for item in items:
        fingerprint = card_fingerprint(item.meta)
        if fingerprint is None:
            continue
        by_card.setdefault(fingerprint, []).append(item)
        if item.year is not None:
            for person in _people(item.meta):
                careers.setdefault(person, []).append((fingerprint, item.year))
    cat = _Catalog(careers, [(it.item_id, _key(it)) for it in items], mention_counts)
    dropped: dict[str, str] = {}
    records: list[dict[str, Any]] = []
    for fingerprint in sorted(by_card):
        group = sorted(by_card[fingerprint], key=lambda it: it.item_id)
        if len(group) < 2:
            continue
        readings = _readings([it for it in group if it.year is not None])
        owner: int | None = 0 if len(readings) == 1 else None
        if len(readings) >= 2:
            owner, rule = _card_owner(fingerprint, group, readings, cat)
            owner_title = readings[owner][0].title if owner is not None else None
            for n, reading in enumerate(readings):
                if n != owner:
                    reason = (
                        f"{fingerprint} is the card of {owner_title}" if owner_title is not None
                        else f"{fingerprint} is shared by {len(readings)} films and none could be told to own it"
                    )
                    dropped.update((it.item_id, reason) for it in reading)
            records.append({
                "card": fingerprint,
                "rule": rule,
                "owner": [it.item_id for it in readings[owner]] if owner is not None else [],
                "readings": [[f"{it.item_id} {it.title}" for it in reading] for reading in readings],
            })
        if owner is not None:
            owner_key = _key(readings[owner][0])
            for item in group:
                if item.year is None and _sequel_pair(_key(item), owner_key):
                    dropped[item.item_id] = f"{fingerprint} is the card of {readings[owner][0].title}"
    return dropped, records


def drop_card(item: Item, reason: str, cfg: CatalogConfig) -> Item:
    """The item without its card's attributes (`CARD_META`), its text rebuilt, and `meta["card_dropped"]` set."""
    meta = {k: v for k, v in item.meta.items() if k not in CARD_META}
    meta["card_dropped"] = reason
    return Item(item.item_id, item.title, build_card(item.title, meta, cfg.card_fields, cfg.max_card_chars),
                item.year, meta)


def _cards_agree(a: Item, b: Item) -> bool:
    """Both items have cards, and they are one card or share a director or a star."""
    if not (_has_card(a.meta) and _has_card(b.meta)):
        return False
    fp_a, fp_b = card_fingerprint(a.meta), card_fingerprint(b.meta)
    return (fp_a is not None and fp_a == fp_b) or bool(_people(a.meta) & _people(b.meta))


def _content_words(key: str) -> set[str]:
    return {t for t in key.split() if t not in _FUNCTION_WORDS and not t.isdigit()}


def fold_groups(items: list[Item], mention_counts: Mapping[str, float]) -> list[list[Item]]:
    """Groups of items that are one film (rule 2 of the section comment), the item to keep first; singletons too.

    Args:
        items: The catalog (foreign cards already dropped).
        mention_counts: item id -> mentions in the training dialogues (which id to keep).
    """
    def preference(it: Item) -> tuple[bool, bool, float, str]:
        return (not _has_card(it.meta), it.year is None, -mention_counts.get(it.item_id, 0.0), it.item_id)

    by_key: dict[str, list[Item]] = {}
    for item in items:
        by_key.setdefault(compact_key(_key(item)), []).append(item)
    groups: list[list[Item]] = []
    for key in sorted(by_key):
        members = sorted(by_key[key], key=preference)
        dated: list[list[Item]] = []
        for item in (it for it in members if it.year is not None):
            for group in dated:
                anchor = group[0]
                assert item.year is not None and anchor.year is not None
                near = all(m.year is not None and abs(m.year - item.year) <= NEAR_YEARS for m in group)
                same = _cards_agree(item, anchor) or (
                    not (_has_card(item.meta) and _has_card(anchor.meta)) and item.year == anchor.year
                )
                if near and same:
                    group.append(item)
                    break
            else:
                dated.append([item])
        yearless: list[list[Item]] = []
        for item in (it for it in members if it.year is None):
            if _has_card(item.meta):
                fingerprint = card_fingerprint(item.meta)
                candidates = [g for g in dated if any(card_fingerprint(m.meta) == fingerprint for m in g)] or [
                    g for g in dated if _cards_agree(item, g[0])
                ]
            else:
                candidates = dated
            if len(candidates) == 1:
                candidates[0].append(item)
                continue
            for group in yearless:
                if card_fingerprint(group[0].meta) == card_fingerprint(item.meta):
                    group.append(item)
                    break
            else:
                yearless.append([item])
        groups.extend(dated)
        groups.extend(yearless)
    # Two names of one film under one card: "Anchorman" and "Anchorman: The Legend of Ron Burgundy (2004)", "Ace
    # Ventura (1994)" and "Ace Ventura: Pet Detective (1994)". A year-less group joins only when the card has one
    # dated group.
    by_card: dict[str, list[int]] = {}
    for n, group in enumerate(groups):
        for fingerprint in {card_fingerprint(m.meta) for m in group} - {None}:
            by_card.setdefault(str(fingerprint), []).append(n)
    uf = _UnionFind(len(groups))
    for fingerprint in sorted(by_card):
        members = by_card[fingerprint]
        dated = [n for n in members if groups[n][0].year is not None]
        for i, n in enumerate(members):
            for m in members[i + 1:]:
                a, b = groups[n][0], groups[m][0]
                if a.year is not None and b.year is not None:
                    near = abs(a.year - b.year) <= NEAR_YEARS
                else:
                    near = (a.year is None) != (b.year is None) and len(dated) == 1
                if near and _same_title(a, b):
                    uf.union(n, m)
    return [sorted((m for n in ns for m in groups[n]), key=preference) for ns in sorted(uf.groups())]


def clean_catalog(
    items: list[Item], mention_counts: Mapping[str, float], cfg: CatalogConfig
) -> tuple[list[Item], dict[str, Any], list[dict[str, Any]]]:
    """Drop foreign cards, then fold duplicates into one item each (see the section comment).

    Args:
        items: The assembled catalog (ids unique).
        mention_counts: item id -> mentions in the training dialogues; {} when unknown.
        cfg: Card fields and length, for the rebuilt cards.

    Returns:
        (items sorted by id, stats for stats.json, audit records for `catalog/cleaning.jsonl`: one per contested
        card and one per folded group).

    Example:
        >>> cleaned, stats, _ = clean_catalog(items, {"82894": 220}, cfg.catalog)
        >>> alias_map(cleaned)["107018"]  # "Frozen" (no year) with the card of Frozen (2013)
        '82894'
    """
    dropped, card_records = foreign_cards(items, mention_counts)
    items = [drop_card(it, dropped[it.item_id], cfg) if it.item_id in dropped else it for it in items]
    out: list[Item] = []
    fold_records: list[dict[str, Any]] = []
    for group in fold_groups(items, mention_counts):
        kept, folded = group[0], group[1:]
        if folded:
            meta = dict(kept.meta)
            # One film: what its other entries know and the kept one lacks (a plot borrowed by a year-less mention)
            # completes its card.
            borrowed = [(k, m.meta[k]) for m in folded for k in CARD_META if m.meta.get(k) and not kept.meta.get(k)]
            for key, value in borrowed:
                meta.setdefault(key, value)
            meta["alias_ids"] = sorted({*kept.meta.get("alias_ids", []), *(m.item_id for m in folded)})
            text = build_card(kept.title, meta, cfg.card_fields, cfg.max_card_chars) if borrowed else kept.text
            kept = Item(kept.item_id, kept.title, text, kept.year, meta)
            fold_records.append({"kept": f"{kept.item_id} {kept.title}",
                                 "folded": [f"{m.item_id} {m.title}" for m in folded]})
        out.append(kept)
    rules = Counter(r["rule"] for r in card_records)
    stats = {
        "items_before": len(items),
        "items_after": len(out),
        "folded_items": len(items) - len(out),
        "fold_groups": len(fold_records),
        "contested_cards": len(card_records),
        "cards_dropped": len(dropped),
        "card_owner_rules": dict(sorted(rules.items())),
        "mention_counts": len(mention_counts),
    }
    audit = [{"kind": "card", **r} for r in card_records] + [{"kind": "fold", **r} for r in fold_records]
    return sorted(out, key=lambda it: it.item_id), stats, audit


def train_mention_counts(data_dir: Path) -> tuple[dict[str, float], list[Path]]:
    """item id -> turns mentioning it in the train dialogues and the lossy file's (when the data stage wrote it).

    Only train-side dialogues: tune, dev and test mentions never decide the catalog.

    Returns:
        (counts, the files read).

    Raises:
        DataError: the data stage has no `train_dialogues.jsonl`.
    """
    paths = [data_dir / "train_dialogues.jsonl"]
    if not paths[0].is_file():
        raise DataError(f"{paths[0]} is missing from a complete data stage; rerun `reges data` with "
                        "run.overwrite=true")
    if (data_dir / LOSSY_DIALOGUES_FILE).is_file():
        paths.append(data_dir / LOSSY_DIALOGUES_FILE)
    counts: Counter[str] = Counter()
    for path in paths:
        for row in read_jsonl(path):
            for turn in Dialogue.from_dict(row).turns:
                counts.update(set(turn.item_ids))
    return {item_id: float(n) for item_id, n in counts.items()}, paths


# ----------------------------------------------------------------------------------------------------------
# INSPIRED: titles from the data stage


def dialogue_titles(
    dialogues: list[Dialogue],
    examples: list[RecExample],
    listed_titles: dict[str, str],
    fallback_titles: list[str],
) -> tuple[dict[str, str], dict[str, int]]:
    """item_id -> title for every item the dialogues mention.

    Where a title comes from, first hit wins (each counted in stats.json):
    1. `titles_from_data`: the data stage's `mentioned_items.jsonl` (the title as the dataset writes it);
    2. `titles_from_examples`: `RecExample.target_titles`, the most frequent spelling, then the first
       alphabetically ("GoodFellas" vs "Goodfellas");
    3. `titles_from_metadata`: a kg.json/id2info title with the same `title_id`;
    4. `titles_from_slug`: rebuilt from the id ("thirst-2016" -> "Thirst (2016)"; a last resort: ids have
       no word breaks, "knivesout-2019" -> "Knivesout (2019)").

    Args:
        dialogues: Every split's dialogues; their turns' item ids are the items.
        examples: Every split's recommendation examples.
        listed_titles: item_id -> title from `mentioned_items.jsonl` ({} when absent); its ids are items too.
        fallback_titles: Titles from the metadata files.

    Returns:
        (titles, counts of where the titles came from).
    """
    seen: Counter[tuple[str, str]] = Counter()
    for example in examples:
        # target_titles may be empty (formats that carry no titles): zip stops there.
        for item_id, title in zip(example.target_item_ids, example.target_titles, strict=False):
            if normalize_title(title):
                seen[(item_id, normalize_title(title))] += 1
    from_examples: dict[str, str] = {}
    for (item_id, title), _ in sorted(seen.items(), key=lambda kv: (-kv[1], kv[0])):
        from_examples.setdefault(item_id, title)
    fallback: dict[str, str] = {}
    for title in sorted(fallback_titles):
        fallback.setdefault(title_id(title), normalize_title(title))
    mentioned = {i for d in dialogues for t in d.turns for i in t.item_ids} | set(listed_titles) | set(from_examples)
    titles: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for item_id in sorted(mentioned):
        if normalize_title(listed_titles.get(item_id, "")):
            titles[item_id], source = normalize_title(listed_titles[item_id]), "titles_from_data"
        elif item_id in from_examples:
            titles[item_id], source = from_examples[item_id], "titles_from_examples"
        elif item_id in fallback:
            titles[item_id], source = fallback[item_id], "titles_from_metadata"
        else:
            titles[item_id], source = title_from_slug(item_id), "titles_from_slug"
        counts[source] += 1
    return titles, dict(sorted(counts.items()))


@dataclass
class DataStageOutput:
    """What the INSPIRED catalog reads from the data stage."""

    dialogues: list[Dialogue]
    examples: list[RecExample]
    listed_titles: dict[str, str]
    files: list[Path]


def read_data_stage(data_dir: Path) -> DataStageOutput:
    """Dialogues and examples of every split, `mentioned_items.jsonl` titles, and the files read."""
    dialogue_files = sorted(data_dir.glob("*_dialogues.jsonl"))
    if not dialogue_files:
        raise DataError(f"{data_dir} has no *_dialogues.jsonl; rerun `reges data` (catalog.format=inspired needs it)")
    result = DataStageOutput([], [], {}, [])
    for path in dialogue_files:
        result.dialogues.extend(Dialogue.from_dict(d) for d in read_jsonl(path))
        result.files.append(path)
        split_file = data_dir / f"{path.name.removesuffix('_dialogues.jsonl')}.jsonl"
        if split_file.is_file():
            result.examples.extend(RecExample.from_dict(d) for d in read_jsonl(split_file))
            result.files.append(split_file)
    mentioned_file = data_dir / "mentioned_items.jsonl"
    if mentioned_file.is_file():
        result.listed_titles = {str(r["item_id"]): str(r.get("title") or "") for r in read_jsonl(mentioned_file)}
        result.files.append(mentioned_file)
    return result


# ----------------------------------------------------------------------------------------------------------
# Stage


def build_catalog(
    cfg: PipelineConfig, run_dir: RunDir, clean: bool
) -> tuple[list[Item], dict[str, Any], dict[str, Path], list[dict[str, Any]]]:
    """Read the inputs named in `cfg.catalog` and assemble the catalog (no writing).

    Args:
        cfg: The pipeline config (`catalog` section).
        run_dir: The run; the data stage is read for INSPIRED titles and, when cleaning, for train mention counts.
        clean: Clean redial and inspired catalogs (`clean_catalog`); custom catalogs are never cleaned.

    Returns:
        (items sorted by item_id, stats, input paths to hash in the manifest, cleaning audit records).

    Raises:
        StageNotReadyError: cleaning (or format inspired) and the data stage is not complete.
    """
    c = cfg.catalog
    inputs: dict[str, Path] = {}
    stats: dict[str, Any] = {"format": c.format}
    tagged: list[tuple[Item, str]] = []
    if c.format == "redial":
        if not c.items_file:
            raise DataError("catalog.items_file is empty; set it to iEvaLM's data/redial/id2info.json")
        info = read_id2info(c.items_file)
        inputs["items_file"] = Path(c.items_file)
        names: dict[str, str] = {}
        if c.names_file:
            names = read_movie_names(c.names_file, "catalog.names_file")
            inputs["names_file"] = Path(c.names_file)
        origin = {"id2info": c.items_file, "names_only": c.names_file}
        tagged = [(i, origin[i.meta["source"]]) for i in redial_items(info, names, c)]
    elif c.format == "inspired":
        data_dir = run_dir.require("data")
        if not c.kg_dir:
            raise DataError("catalog.kg_dir is empty; set it to CFCRS data/inspired/ (kg.json, entity2id.json, ...)")
        kg = read_kg(c.kg_dir)
        for name in ("kg.json", "entity2id.json", "relation2id.json"):
            inputs[name] = Path(c.kg_dir) / name
        info = read_id2info(c.items_file) if c.items_file else {}
        if c.items_file:
            inputs["items_file"] = Path(c.items_file)
        data = read_data_stage(data_dir)
        inputs.update({f"data/{path.name}": path for path in data.files})
        fallback = [m.title for m in kg] + [str(r["name"]) for r in info.values()]
        titles, title_counts = dialogue_titles(data.dialogues, data.examples, data.listed_titles, fallback)
        stats.update(title_counts)
        items, inspired_stats = inspired_items(InspiredInputs(titles, kg, info), c)
        stats.update(inspired_stats)
        tagged = [(i, "the INSPIRED dialogues/kg.json") for i in items]
    elif c.format == "custom":
        if not c.items_file:
            raise DataError("catalog.items_file is empty; set it to your items JSONL (see examples/books/items.jsonl)")
        tagged = read_custom_items(c.items_file, c)
        for item, _ in tagged:
            item.meta.setdefault("source", "custom")
        inputs["items_file"] = Path(c.items_file)
    else:  # the config loader only lets the Literal values through
        raise AssertionError(c.format)
    for n, path in enumerate(c.extra_items_files):
        extra = read_custom_items(path, c)
        for item, _ in extra:
            item.meta.setdefault("source", "extra")
        tagged.extend(extra)
        inputs[f"extra_items_files[{n}]"] = Path(path)
        stats.setdefault("extra_items", 0)
        stats["extra_items"] += len(extra)
    items = sorted(check_unique(tagged), key=lambda i: i.item_id)
    if not items:
        raise CatalogError(f"the catalog is empty (format {c.format!r}); check catalog.items_file")
    audit: list[dict[str, Any]] = []
    stats["clean"] = clean and c.format != "custom"
    if stats["clean"]:
        # Which reading owns a contested card and which id a film keeps are decided with train mentions only.
        counts, count_files = train_mention_counts(run_dir.require("data"))
        inputs.update({f"data/{path.name}": path for path in count_files})
        items, stats["cleaning"], audit = clean_catalog(items, counts, c)
        logger.info(
            "catalog cleaning: %d items folded into %d, %d cards dropped (%d contested cards)",
            stats["cleaning"]["folded_items"], stats["cleaning"]["fold_groups"], stats["cleaning"]["cards_dropped"],
            stats["cleaning"]["contested_cards"],
        )
    stats.update(catalog_stats(items))
    return items, stats, inputs, audit


def check_mentioned_items(run_dir: RunDir, items: list[Item], cfg: PipelineConfig) -> None:
    """Refuse a catalog that lacks item ids the custom dialogues mention.

    The `data` stage reads custom dialogues without the items file, so an id with a typo, or an item left out
    of the items file, would only show up later as a target no recommender can ever hit. Checked when the
    data stage is complete and read custom dialogues (its manifest's `format`). Other formats are left alone:
    their ids come from the dataset itself, and INSPIRED test titles missing from the catalog are real data
    that evaluation reports.

    Raises:
        CatalogError: Some mentioned ids are not in `items`; names up to 5, the dialogue files and the fix.
        DataError: The complete data stage has no `mentioned_items.jsonl` (written by an older reges).
    """
    if not run_dir.is_complete("data"):
        return
    manifest = run_dir.manifest("data")
    if manifest["config"].get("format", cfg.data.format) != "custom":
        return
    mentioned_file = run_dir.stage_dir("data") / "mentioned_items.jsonl"
    if not mentioned_file.is_file():
        raise DataError(f"{mentioned_file} is missing from a complete data stage; rerun `reges data` with "
                        "run.overwrite=true")
    known = {item.item_id for item in items}
    missing = [r for r in read_jsonl(mentioned_file) if str(r["item_id"]) not in known]
    if not missing:
        return
    splits = {split for r in missing for split in r.get("mentions", {})}
    # The data manifest names its inputs "split:path".
    files = sorted({name.split(":", 1)[1] for name in manifest["inputs"] if name.split(":", 1)[0] in splits})
    shown = ", ".join(repr(str(r["item_id"])) for r in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise CatalogError(
        f"{len(missing)} item ids mentioned in the dialogues are not in the catalog: {shown}{more} "
        f"(mentioned in {', '.join(files) or 'the data stage dialogues'}); add them to the items file "
        f"({cfg.catalog.items_file or 'catalog.items_file'}) or to catalog.extra_items_files, or fix the ids in "
        "the dialogues"
    )


def run(cfg: PipelineConfig, run_dir: RunDir) -> None:
    """Stage `catalog`: build `catalog/items.jsonl` + `stats.json`, then the manifest.

    The catalog is built (and checked against the ids custom dialogues mention) before the stage directory
    is touched, so a bad input never destroys a complete catalog from an earlier run (even with
    run.overwrite=true).

    Example:
        reges catalog --config configs/redial.yaml --run-dir runs/redial
    """
    started = now_iso()
    if run_dir.is_complete("catalog") and not cfg.run.overwrite:
        run_dir.begin("catalog", overwrite=False)  # raises StageCompleteError with the fix
    items, stats, inputs, audit = build_catalog(cfg, run_dir, clean=cfg.catalog.clean)
    check_mentioned_items(run_dir, items, cfg)
    out = run_dir.begin("catalog", cfg.run.overwrite)
    n = write_jsonl(out / "items.jsonl", items)
    write_json(out / "stats.json", stats)
    outputs = {"items.jsonl": n}
    if stats["clean"]:
        outputs["cleaning.jsonl"] = write_jsonl(out / "cleaning.jsonl", audit)
    logger.info(
        "catalog: %d items (%d with genre, %d with people, %d with plot)",
        stats["items"], stats["with_genre"], stats["with_people"], stats["with_plot"],
    )
    run_dir.finish(
        "catalog",
        config=cfg.catalog,
        inputs=inputs,
        outputs=outputs,
        seed=cfg.run.seed,
        started=started,
        extra={"clean": stats["clean"]},
    )
