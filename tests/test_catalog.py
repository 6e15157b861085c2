"""The catalog stage on real-file fixtures (ReDial, INSPIRED, custom), extra items and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reges.catalog import (
    InspiredInputs,
    KgMovie,
    alias_map,
    build_card,
    clean_catalog,
    cut_text,
    inspired_items,
    load_catalog,
    make_item,
    read_id2info,
    read_items,
    read_kg,
    run,
)
from reges.cli import main
from reges.config import PipelineConfig, load_config
from reges.data.examples import run as run_data
from reges.errors import CatalogError, DataError, StageCompleteError, StageNotReadyError
from reges.io import RunDir, now_iso, read_json, read_jsonl, write_jsonl
from reges.records import Dialogue, Item, RecExample, Turn


@pytest.fixture()
def cat_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "catalog"


def redial_cfg(cat_dir: Path, *overrides: str) -> PipelineConfig:
    return load_config(
        None,
        [
            "catalog.format=redial",
            "catalog.clean=true",  # most tests here are about cleaning; the uncleaned ones say clean=false
            f"catalog.items_file={cat_dir / 'id2info.json'}",
            f"catalog.names_file={cat_dir / 'movies_with_mentions.csv'}",
            "run.show_progress=false",
            *overrides,
        ],
    )


def write_redial_data_stage(rd: RunDir, mentions: dict[str, int] | None = None) -> None:
    """A hand-made `data` stage whose train dialogues mention ReDial ids (`mentions`: id -> turns mentioning it)."""
    out = rd.begin("data", overwrite=False)
    turns = [Turn("user", f"I liked @{i}", [i]) for i, n in (mentions or {}).items() for _ in range(n)]
    write_jsonl(out / "train_dialogues.jsonl", [Dialogue("t1", turns or [Turn("user", "hi")])])
    rd.finish("data", config={}, inputs={}, outputs={"train_dialogues.jsonl": 1}, seed=0, started=now_iso())


def redial_run(path: Path, mentions: dict[str, int] | None = None) -> RunDir:
    rd = RunDir(path)
    write_redial_data_stage(rd, mentions)
    return rd


def write_custom(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------- cards


def test_build_card_format_and_order() -> None:
    meta = {
        "genre": ["action", "sci-fi"],
        "director": ["Christopher Nolan"],
        "star": ["Leonardo DiCaprio", "Elliot Page"],
        "plot": "A thief who steals corporate secrets through dreams.",
        "writer": ["Christopher Nolan"],
    }
    card = build_card("Inception (2010)", meta, ["genre", "director", "star", "plot"], 600)
    assert card == (
        "Inception (2010). Genre: action, sci-fi. Director: Christopher Nolan. "
        "Stars: Leonardo DiCaprio, Elliot Page. Plot: A thief who steals corporate secrets through dreams."
    )
    # empty fields are skipped; unknown fields get their capitalised name; order follows card_fields
    assert build_card("X", {"plot": "", "page_count": 12, "genre": []}, ["plot", "page_count", "genre"], 600) == (
        "X. Page count: 12."
    )


def test_cut_text_at_word_boundary() -> None:
    assert cut_text("short", 10) == "short"
    assert cut_text("one two three four", 12) == "one two…"
    assert len(cut_text("word " * 100, 50)) <= 50


# --------------------------------------------------------------------------------------------------- redial


def test_redial_stage_on_fixtures_uncleaned(tmp_path: Path, cat_dir: Path) -> None:
    rd = RunDir(tmp_path / "run")
    run(redial_cfg(cat_dir, "catalog.clean=false"), rd)  # no data stage needed without cleaning
    items = load_catalog(rd)
    by_id = {i.item_id: i for i in items}

    assert [i.item_id for i in items] == sorted(by_id)  # sorted by item_id
    assert len(items) == 18  # 15 id2info + 3 only in movies_with_mentions.csv
    pari = by_id["100026"]
    assert pari.title == "Pari (1995)" and pari.year == 1995
    assert pari.text.startswith("Pari (1995). Genre: drama, romance. Director: Dariush Mehrjui. Stars: Niki Karimi, ")
    assert "Plot: Haunted by a book found in her dead brother's room" in pari.text
    assert pari.meta["imdb_id"] == "tt0114092" and pari.meta["source"] == "id2info"
    assert pari.meta["writer"] == ["J.D. Salinger", "Dariush Mehrjui"]

    assert by_id["100493"].title == "Why Him? (2016)"
    assert by_id["100043"].title == "Back to the Future" and by_id["100043"].year is None
    # an empty plot leaves no "Plot:" and no meta key
    assert "Plot:" not in by_id["101352"].text and "plot" not in by_id["101352"].meta
    # both ids named "Frozen (2010)" stay
    assert by_id["123210"].title == by_id["151348"].title == "Frozen (2010)"
    # ids missing from id2info: title-only card, normalised name
    head = by_id["75796"]
    assert (head.title, head.text, head.year, head.meta) == (
        "Headhunter (2009)", "Headhunter (2009).", 2009, {"source": "names_only"}
    )

    stats = read_json(rd.path / "catalog" / "stats.json")
    assert stats["items"] == 18
    assert stats["with_plot"] == 14
    assert stats["by_source"] == {"id2info": 15, "names_only": 3}
    assert stats["shared_titles"] == 2  # Frozen (2010), Tinker Bell

    manifest = rd.manifest("catalog")
    assert manifest["stage"] == "catalog"
    assert manifest["outputs"] == {"items.jsonl": {"rows": 18}}
    assert set(manifest["inputs"]) == {"items_file", "names_file"}
    assert manifest["config"]["format"] == "redial"
    assert manifest["clean"] is False and stats["clean"] is False
    assert read_items(rd.path / "catalog" / "items.jsonl") == items


def test_redial_stage_on_fixtures_cleaned(tmp_path: Path, cat_dir: Path) -> None:
    """Cleaning folds the two "Frozen (2010)" and the two "Tinker Bell" ids; every id stays resolvable."""
    rd = redial_run(tmp_path / "run", {"82894": 3, "151348": 1})
    run(redial_cfg(cat_dir), rd)
    items = load_catalog(rd)
    by_id = {i.item_id: i for i in items}
    assert len(items) == 16
    # the kept id has a card, a year, then the most train mentions: 151348 (1 mention) over 123210 (none)
    assert by_id["151348"].meta["alias_ids"] == ["123210"] and "123210" not in by_id
    assert by_id["104784"].meta["alias_ids"] == ["183951"] and "183951" not in by_id
    assert alias_map(items) == {"123210": "151348", "183951": "104784"}
    assert by_id["100026"].text.startswith("Pari (1995). Genre: drama, romance.")  # untouched

    stats = read_json(rd.path / "catalog" / "stats.json")
    assert stats["clean"] is True and stats["items"] == 16 and stats["shared_titles"] == 0
    assert stats["cleaning"]["folded_items"] == 2 and stats["cleaning"]["fold_groups"] == 2
    assert stats["cleaning"]["cards_dropped"] == 0
    audit = read_jsonl(rd.path / "catalog" / "cleaning.jsonl")
    assert {"kind": "fold", "kept": "151348 Frozen (2010)", "folded": ["123210 Frozen (2010)"]} in audit
    manifest = rd.manifest("catalog")
    assert manifest["outputs"] == {"items.jsonl": {"rows": 16}, "cleaning.jsonl": {"rows": 2}}
    assert set(manifest["inputs"]) == {"items_file", "names_file", "data/train_dialogues.jsonl"}
    assert manifest["clean"] is True


def test_cleaning_needs_the_data_stage(tmp_path: Path, cat_dir: Path) -> None:
    with pytest.raises(StageNotReadyError, match="reges data"):
        run(redial_cfg(cat_dir), RunDir(tmp_path))


def test_redial_without_names_file(tmp_path: Path, cat_dir: Path) -> None:
    rd = redial_run(tmp_path)
    run(redial_cfg(cat_dir, "catalog.names_file="), rd)
    assert len(load_catalog(rd)) == 15 - 2  # two folded


def test_card_fields_and_max_chars(tmp_path: Path, cat_dir: Path) -> None:
    rd = redial_run(tmp_path)
    run(redial_cfg(cat_dir, "catalog.card_fields=[director]", "catalog.max_card_chars=40"), rd)
    by_id = {i.item_id: i for i in load_catalog(rd)}
    assert by_id["100026"].text == "Pari (1995). Director: Dariush Mehrjui."
    assert all(len(i.text) <= 40 for i in by_id.values())


def test_complete_stage_is_not_overwritten_and_bad_input_keeps_it(tmp_path: Path, cat_dir: Path) -> None:
    rd = redial_run(tmp_path)
    run(redial_cfg(cat_dir), rd)
    with pytest.raises(StageCompleteError):
        run(redial_cfg(cat_dir), rd)
    # overwrite with a broken input: the error comes before the complete catalog is touched
    with pytest.raises(DataError):
        run(redial_cfg(cat_dir, "run.overwrite=true", f"catalog.items_file={tmp_path / 'missing.json'}"), rd)
    assert len(load_catalog(rd)) == 16


def test_load_catalog_requires_the_stage(tmp_path: Path) -> None:
    with pytest.raises(StageNotReadyError, match="reges catalog"):
        load_catalog(RunDir(tmp_path))


# --------------------------------------------------------------------------------------------------- inspired


def write_data_stage(rd: RunDir) -> None:
    """A tiny `data` stage output, written by hand (turn item ids are `title_id`s, as the INSPIRED loader makes)."""
    out = rd.begin("data", overwrite=False)
    t_user1 = Turn("user", "Hi, I liked Zootopia and GoodFellas.", ["zootopia-2016", "goodfellas-1990"])
    t_rec1 = Turn("assistant", "Try Knives Out or Frozen 2.", ["knivesout-2019", "frozen2-2019"])
    t_user2 = Turn("user", "What about Avengers?", ["avengers-2012"])
    t_rec2 = Turn("assistant", "Akira, or Lady and the Tramp.", ["akira", "ladyandthetramp"])
    train = [Dialogue("d1", [t_user1, t_rec1, t_user2, t_rec2])]
    examples = [
        RecExample("d1_1", "d1", [t_user1], t_rec1.item_ids, [False, False], ["Knives Out (2019)", "Frozen 2 (2019)"]),
        RecExample("d1_3", "d1", [t_user1, t_rec1, t_user2], t_rec2.item_ids, [False, False],
                   ["Akira ()", "Lady and the Tramp"]),
    ]
    dev = [Dialogue("d2", [Turn("user", "Horror please", []), Turn("assistant", "Thirst", ["thirst-2016"])])]
    write_jsonl(out / "train_dialogues.jsonl", train)
    write_jsonl(out / "train.jsonl", examples)
    write_jsonl(out / "dev_dialogues.jsonl", dev)  # no dev.jsonl: titles for its ids come from elsewhere
    rd.finish("data", config={}, inputs={}, outputs={"train.jsonl": 2}, seed=0, started=now_iso())


def inspired_cfg(cat_dir: Path, *overrides: str) -> PipelineConfig:
    return load_config(
        None,
        [
            "catalog.format=inspired",
            "catalog.clean=true",
            f"catalog.items_file={cat_dir / 'id2info.json'}",
            f"catalog.kg_dir={cat_dir / 'kg'}",
            *overrides,
        ],
    )


def test_inspired_stage_merges_dialogues_kg_and_plots(tmp_path: Path, cat_dir: Path) -> None:
    rd = RunDir(tmp_path)
    write_data_stage(rd)
    run(inspired_cfg(cat_dir), rd)
    by_id = {i.item_id: i for i in load_catalog(rd)}

    assert sorted(by_id) == [
        "akira", "antlers-2020", "avengers-2012", "frozen2-2019", "goodfellas-1990", "knivesout-2019",
        "ladyandthetramp-1955", "ladyandthetramp-2019", "predator-2018", "thirst-2016", "zootopia-2016",
    ]
    # dialogue title + kg attributes ("Frozen 2" = kg "Frozen II"), no id2info match for the sequel
    frozen = by_id["frozen2-2019"]
    assert frozen.title == "Frozen 2 (2019)" and frozen.meta["source"] == "dialogues+kg"
    assert frozen.meta["director"] == ["Jennifer Lee", "Chris Buck"] and "plot" not in frozen.meta
    # "Akira ()" in the dialogue takes the kg year; plot borrowed from id2info
    akira = by_id["akira"]
    assert (akira.title, akira.year, akira.meta["source"], akira.meta["redial_id"]) == (
        "Akira (1988)", 1988, "dialogues+kg+id2info", "77945"
    )
    assert akira.meta["plot"].startswith("A secret military project")
    # a seeker-only mention without a title in the data stage: kg "The Avengers (2012)" has its id, so it gives
    # the title (not the id rebuilt as "Avengers (2012)") and merges into it
    avengers = by_id["avengers-2012"]
    assert avengers.title == "The Avengers (2012)" and avengers.meta["redial_id"] == "78418"
    assert avengers.meta["source"] == "dialogues+kg+id2info"
    # seeker-only mention whose slug is a kg title: that title
    assert by_id["zootopia-2016"].title == "Zootopia (2016)"
    assert by_id["zootopia-2016"].meta["redial_id"] == "81792"  # year-less "Zootopia" in id2info
    # the two dated "Lady and the Tramp" kg movies tie on the year-less dialogue item, which wins the year-less
    # id2info record (exact beats year-missing); that record is the 1955 film's card (its cast is kg's 1955 cast),
    # so cleaning folds the year-less item into the 1955 one, which takes the plot it lacked
    lady = by_id["ladyandthetramp-1955"]
    assert lady.meta["source"] == "kg" and lady.meta["alias_ids"] == ["ladyandthetramp"]
    assert lady.meta["imdb_id"] == "tt0048280" and "Plot: " in lady.text
    assert by_id["ladyandthetramp-2019"].meta["source"] == "kg"
    assert "alias_ids" not in by_id["ladyandthetramp-2019"].meta
    # "The Predator (2018)" must not borrow the year-less "Predator" (1987) plot (nor share its id)
    assert by_id["predator-2018"].meta["source"] == "kg"
    assert by_id["thirst-2016"].text == "Thirst (2016)."
    assert by_id["antlers-2020"].text.startswith("Antlers (2020). Genre: ")

    stats = read_json(rd.path / "catalog" / "stats.json")
    assert stats["dialogue_items"] == 8
    assert (stats["titles_from_examples"], stats["titles_from_metadata"], stats["titles_from_slug"]) == (4, 3, 1)
    assert (stats["kg_movies"], stats["kg_merged_into_dialogue_items"], stats["kg_new_items"]) == (10, 6, 4)
    assert (stats["kg_merged_by_id"], stats["kg_id_collisions"]) == (0, 0)
    assert stats["items_matched_to_id2info"] == 5
    assert stats["kg_titles_exactly_in_id2info"] == 3  # Akira (1988), The Avengers (2012), Goodfellas (1990)
    assert (stats["items"], stats["with_genre"], stats["with_plot"]) == (11, 10, 5)
    assert stats["cleaning"]["folded_items"] == 1 and stats["cleaning"]["cards_dropped"] == 0
    inputs = set(rd.manifest("catalog")["inputs"])
    assert {"kg.json", "entity2id.json", "items_file", "data/train_dialogues.jsonl"} <= inputs


def test_inspired_titles_from_mentioned_items(tmp_path: Path, cat_dir: Path) -> None:
    rd = RunDir(tmp_path)
    write_data_stage(rd)
    listed = {"avengers-2012": "Avengers  (2012)", "thirst-2016": "Thirst (2016)", "akira": "Akira ()",
              "mine-2016": "Mine (2016)", "zootopia-2016": ""}  # "": no title, look elsewhere
    write_jsonl(rd.path / "data" / "mentioned_items.jsonl",
                [{"item_id": i, "title": t, "mentions": {"train": 1}} for i, t in listed.items()])
    run(inspired_cfg(cat_dir), rd)
    by_id = {i.item_id: i for i in load_catalog(rd)}
    assert len(by_id) == 12 and by_id["mine-2016"].title == "Mine (2016)"
    assert by_id["avengers-2012"].title == "Avengers (2012)"
    stats = read_json(rd.path / "catalog" / "stats.json")
    assert (stats["titles_from_data"], stats["titles_from_examples"], stats["titles_from_metadata"]) == (4, 3, 2)
    assert "titles_from_slug" not in stats
    assert "data/mentioned_items.jsonl" in rd.manifest("catalog")["inputs"]


def test_inspired_needs_the_data_stage(tmp_path: Path, cat_dir: Path) -> None:
    with pytest.raises(StageNotReadyError, match="reges data"):
        run(inspired_cfg(cat_dir), RunDir(tmp_path))
    assert not (tmp_path / "catalog" / "manifest.json").exists()


def test_inspired_without_id2info(tmp_path: Path, cat_dir: Path) -> None:
    rd = RunDir(tmp_path)
    write_data_stage(rd)
    run(inspired_cfg(cat_dir, "catalog.items_file="), rd)
    items = load_catalog(rd)
    assert len(items) == 12 and not any("plot" in i.meta for i in items)


def test_inspired_kg_duplicates_merge_by_id_or_are_dropped() -> None:
    """kg spellings of one film share a title_id: the first one left unmatched goes to the item of that id."""
    kg = [
        KgMovie("1", "The Avengers (2012)", director=["Joss Whedon"]),
        KgMovie("2", "Avengers, The (2012)", director=["Someone Else"]),  # ties with 1: matching gives it to nobody
        KgMovie("3", "Spider-Man (2002)", genre=["action"]),
        KgMovie("4", "Spiderman (2002)", genre=["comedy"]),  # a kg duplicate of 3
    ]
    cfg = load_config(None, [])
    items, stats = inspired_items(InspiredInputs({"avengers-2012": "Avengers (2012)"}, kg), cfg.catalog)
    by_id = {i.item_id: i for i in items}
    assert sorted(by_id) == ["avengers-2012", "spiderman-2002"]
    assert by_id["avengers-2012"].title == "Avengers (2012)"  # the dialogue's spelling stays
    assert by_id["avengers-2012"].meta["director"] == ["Joss Whedon"]
    assert by_id["avengers-2012"].meta["source"] == "dialogues+kg"
    assert by_id["spiderman-2002"].title == "Spider-Man (2002)" and by_id["spiderman-2002"].meta["genre"] == ["action"]
    assert (stats["kg_merged_into_dialogue_items"], stats["kg_merged_by_id"]) == (0, 1)
    assert (stats["kg_new_items"], stats["kg_id_collisions"]) == (1, 2)


def test_read_kg_resolves_names(cat_dir: Path) -> None:
    movies = {m.title: m for m in read_kg(cat_dir / "kg")}
    assert len(movies) == 10
    antlers = movies["Antlers (2020)"]
    assert antlers.director == ["Scott Cooper"]
    assert antlers.star[:2] == ["Keri Russell", "Graham Greene"]  # file order kept
    assert "horror" in antlers.genre


# --------------------------------------------------------------------------------------------------- cleaning


def _film(item_id: str, title: str, imdb: str = "", director: tuple[str, ...] = (),
          star: tuple[str, ...] = ()) -> Item:
    """An item as the redial reader makes it; no imdb, director or star: a title-only (names_only) item."""
    meta: dict = {"source": "id2info" if imdb else "names_only"}
    if imdb:
        meta.update(imdb_id=imdb, director=list(director), star=list(star), genre=["drama"], plot=f"About {title}.")
    cfg = load_config(None, []).catalog
    return make_item(item_id, title, meta, cfg)


def _clean(items: list[Item], mentions: dict[str, float] | None = None) -> tuple[dict[str, Item], dict]:
    cleaned, stats, _ = clean_catalog(items, mentions or {}, load_config(None, []).catalog)
    return {it.item_id: it for it in cleaned}, stats


def test_careers_give_a_remakes_card_to_its_year() -> None:
    """A 2010 cast on "Remake (1984)": the people's other films are all after 2005, so the card is the 2010 one's."""
    people = {"director": ("Dee",), "star": ("Ess", "Tee")}
    items = [
        _film("1", "Remake (1984)", "tt1", **people), _film("2", "Remake (2010)", "tt1", **people),
        _film("3", "Other (2008)", "tt3", ("Dee",), ("Ess", "Zed")), _film("4", "Later (2012)", "tt4", ("Why",),
                                                                           ("Tee", "Ess")),
    ]
    by_id, stats = _clean(items, {"1": 50.0})  # mentions do not outvote the careers
    assert by_id["1"].meta["card_dropped"] == "imdb:tt1 is the card of Remake (2010)"
    assert by_id["1"].text == "Remake (1984)." and "imdb_id" not in by_id["1"].meta
    assert "card_dropped" not in by_id["2"].meta and "Director: Dee" in by_id["2"].text
    assert stats["card_owner_rules"] == {"careers": 1} and stats["cards_dropped"] == 1
    assert "alias_ids" not in by_id["2"].meta  # two films of one title, not folded


def test_a_generic_title_loses_a_shared_card_to_a_distinctive_one() -> None:
    items = [_film("1", "It (1990)", "tt9", ("Scorsese",), ("De Niro", "Liotta")),
             _film("2", "Goodfellas (1990)", "tt9", ("Scorsese",), ("De Niro", "Liotta")),
             _film("3", "It (2017)", "tt5", ("Muschietti",), ("Skarsgard", "Lillis")),
             _film("4", "It Follows (2014)", "tt6", ("Mitchell",), ("Monroe", "Gilchrist"))]
    by_id, stats = _clean(items, {"1": 100.0, "2": 10.0})
    assert by_id["1"].meta["card_dropped"] == "imdb:tt9 is the card of Goodfellas (1990)"
    assert stats["card_owner_rules"] == {"distinct_title": 1}


def test_mentions_decide_last_and_nothing_decided_drops_every_reading() -> None:
    items = [_film("1", "Day of the Dead (1985)", "tt7", ("Romero",), ("A", "B")),
             _film("2", "Day of the Dead (2008)", "tt7", ("Romero",), ("A", "B"))]
    by_id, stats = _clean(items, {"2": 3.0})
    assert "card_dropped" in by_id["1"].meta and "card_dropped" not in by_id["2"].meta
    assert stats["card_owner_rules"] == {"mentions": 1}
    by_id, stats = _clean(items)
    assert all("card_dropped" in it.meta for it in by_id.values())
    assert stats["card_owner_rules"] == {"undecided": 1} and stats["cards_dropped"] == 2


def test_folding_rules() -> None:
    anchorman = ("McKay",), ("Ferrell", "Applegate")
    jl = ("Snyder",), ("Affleck", "Gadot")
    home = ("Columbus",), ("Culkin", "Pesci")
    items = [
        _film("a1", "Anchorman: The Legend of Ron Burgundy (2004)", "tt1", *anchorman),
        _film("a2", "Anchorman", "tt1", *anchorman),  # typed short title, same card: one film
        _film("j1", "Justice League (2017)", "tt2", *jl),
        _film("j2", "Justice League: Doom", "tt2", *jl),  # a word the 2017 title lacks: another film
        _film("h1", "Home Alone (1990)", "tt3", *home),
        _film("h2", "Home Alone 4", "tt3", *home),  # a sequel carrying the original's card: the card goes
        _film("z1", "Zapped! (1982)", "tt4", ("Rosenthal",), ("Baio", "Ann")),
        _film("z2", "Zapped"),  # no card, the only film of the title
        _film("d1", "Dracula (1931)", "tt5", ("Browning",), ("Lugosi", "Manners")),
        _film("d2", "Dracula (1958)", "tt6", ("Fisher",), ("Cushing", "Lee")),
        _film("d3", "Dracula"),  # no card, two films of the title: left alone
        _film("s1", "Saw (2004)", "tt7", ("Wan",), ("Elwes", "Whannell")),
        _film("s2", "Saw (2003)", "tt8", ("Wan",), ("Whannell", "Lewis")),  # near year, same director
        _film("f1", "Frozen (2013)", "tt9", ("Buck",), ("Bell", "Menzel")),
        _film("f2", "Frozen (2010)", "tt10", ("Green",), ("Ashmore", "Bell2")),  # another film of the title
    ]
    by_id, stats = _clean(items, {"s2": 5.0})
    assert alias_map(by_id.values()) == {"a2": "a1", "z2": "z1", "s1": "s2"}
    assert by_id["h2"].meta["card_dropped"] == "imdb:tt3 is the card of Home Alone (1990)"
    assert "card_dropped" not in by_id["j2"].meta and "j2" in by_id and "d3" in by_id
    assert (stats["items_before"], stats["items_after"], stats["fold_groups"]) == (15, 12, 3)


# --------------------------------------------------------------------------------------------------- custom


def test_custom_format_and_extra_items(tmp_path: Path) -> None:
    items_file = write_custom(
        tmp_path / "items.jsonl",
        [
            {"title": "Dune (1965)", "text": "Dune (1965). Politics and sand on a desert planet."},
            {"item_id": "b2", "title": "Emma", "year": 1815, "meta": {"author": "Jane Austen", "genre": ["romance"]}},
            "",  # blank lines are fine
        ],
    )
    extra = write_custom(tmp_path / "extra.jsonl", [{"item_id": "b3", "title": "Persuasion", "text": "By Austen."}])
    cfg = load_config(
        None,
        [
            "catalog.format=custom",
            f"catalog.items_file={items_file}",
            f"catalog.extra_items_files=[{extra}]",
            "catalog.card_fields=[author, genre]",
        ],
    )
    rd = RunDir(tmp_path / "run")
    run(cfg, rd)
    by_id = {i.item_id: i for i in load_catalog(rd)}
    assert sorted(by_id) == ["b2", "b3", "dune-1965"]  # item_id defaults to the title slug
    assert by_id["dune-1965"].text == "Dune (1965). Politics and sand on a desert planet."
    assert (by_id["b2"].title, by_id["b2"].year) == ("Emma (1815)", 1815)
    assert by_id["b2"].text == "Emma (1815). Author: Jane Austen. Genre: romance."
    assert by_id["b3"].text == "Persuasion. By Austen."  # a text that does not name the item gets the title
    assert by_id["b3"].meta["source"] == "extra" and by_id["dune-1965"].meta["source"] == "custom"
    assert read_json(rd.path / "catalog" / "stats.json")["extra_items"] == 1


def test_extra_items_added_to_redial(tmp_path: Path, cat_dir: Path) -> None:
    extra = write_custom(tmp_path / "extra.jsonl", [{"item_id": "999999", "title": "Knives Out (2019)",
                                                     "meta": {"genre": ["mystery"]}}])
    rd = redial_run(tmp_path / "run")
    run(redial_cfg(cat_dir, f"catalog.extra_items_files=[{extra}]"), rd)
    by_id = {i.item_id: i for i in load_catalog(rd)}
    assert len(by_id) == 19 - 2 and by_id["999999"].text == "Knives Out (2019). Genre: mystery."


def test_duplicate_item_id_names_both_sources(tmp_path: Path, cat_dir: Path) -> None:
    extra = write_custom(tmp_path / "extra.jsonl", [{"item_id": "100026", "title": "Pari", "text": "again"}])
    rd = RunDir(tmp_path / "run")
    with pytest.raises(CatalogError) as e:
        run(redial_cfg(cat_dir, f"catalog.extra_items_files=[{extra}]"), rd)
    msg = str(e.value)
    assert "'100026'" in msg and "id2info.json" in msg and f"{extra}:1" in msg and "another item_id" in msg
    assert not (rd.path / "catalog" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("rows", "error", "pattern"),
    [
        (['{"title": "A", "text": "a"}', '{"title": "B", "text": '], DataError, r"items\.jsonl:2: malformed JSON"),
        ([{"text": "no title here"}], CatalogError, r"items\.jsonl:1: a catalog record without title"),
        ([{"title": "  ", "text": "blank title"}], CatalogError, "without title"),
        ([{"title": "Solo", "meta": {"isbn": "123"}}], CatalogError, r"without text: item 'solo'.*add a 'text'"),
        ([{"title": "A", "txt": "typo"}], DataError, "unknown key 'txt'; did you mean 'text'"),
        ([{"title": "A (2001)", "year": 2002, "text": "a"}], CatalogError, "make them agree"),
        ([{"title": "A", "year": "2001", "text": "a"}], DataError, "'year' must be an integer"),
        ([{"title": "A", "meta": ["genre"], "text": "a"}], DataError, "'meta' must be an object"),
        (["[1, 2]"], DataError, "expected a JSON object"),
        ([{"title": "A", "text": "a"}, {"title": "A", "text": "b"}], CatalogError, "duplicate item id 'a'"),
    ],
)
def test_bad_custom_records(tmp_path: Path, rows: list, error: type, pattern: str) -> None:
    items_file = write_custom(tmp_path / "items.jsonl", rows)
    cfg = load_config(None, ["catalog.format=custom", f"catalog.items_file={items_file}"])
    rd = RunDir(tmp_path / "run")
    with pytest.raises(error, match=pattern):
        run(cfg, rd)
    assert not (rd.path / "catalog" / "manifest.json").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        ["catalog.format=custom", "catalog.items_file=/nonexistent/items.jsonl"],
        ["catalog.format=custom"],  # items_file empty
        ["catalog.format=redial", "catalog.items_file=/nonexistent/id2info.json"],
        ["catalog.format=inspired", "catalog.kg_dir=/nonexistent/kg"],
    ],
)
def test_cli_bad_input_exits_nonzero_without_manifest(
    tmp_path: Path, overrides: list[str], capsys: pytest.CaptureFixture[str], cat_dir: Path
) -> None:
    rd = RunDir(tmp_path / "run")
    if "catalog.format=inspired" in overrides:
        write_data_stage(rd)
    assert main(["catalog", "--run-dir", str(rd.path), *overrides]) == 2
    err = capsys.readouterr().err
    assert "reges: error:" in err and ("nonexistent" in err or "catalog.items_file is empty" in err)
    assert not (rd.path / "catalog" / "manifest.json").exists()


BOOKS = Path(__file__).resolve().parents[1] / "examples" / "books"
DROPPED_BOOKS = {"a-brief-history-of-time", "dune", "foundation", "jane-eyre", "moby-dick", "the-road"}


def test_cli_custom_dialogue_ids_missing_from_the_catalog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The data stage never reads the items file, so the catalog stage catches ids it lacks (exit 2, no manifest)."""
    lines = (BOOKS / "items.jsonl").read_text("utf-8").splitlines()
    kept = [line for line in lines if json.loads(line)["item_id"] not in DROPPED_BOOKS]
    assert len(kept) == len(lines) - len(DROPPED_BOOKS)
    items_file = write_custom(tmp_path / "items.jsonl", kept)
    rd = tmp_path / "run"
    data = ["data.format=custom", f"data.train_files=[{BOOKS / 'dialogues.jsonl'}]", "run.show_progress=false"]
    assert main(["data", "--run-dir", str(rd), *data]) == 0
    catalog = [*data, "catalog.format=custom", f"catalog.items_file={items_file}"]
    assert main(["catalog", "--run-dir", str(rd), *catalog]) == 2
    err = capsys.readouterr().err
    assert "reges: error: 6 item ids mentioned in the dialogues are not in the catalog" in err
    # up to 5 ids, sorted as in mentioned_items.jsonl, then a count
    assert "'a-brief-history-of-time', 'dune', 'foundation', 'jane-eyre', 'moby-dick' and 1 more" in err
    assert "the-road" not in err
    assert str(BOOKS / "dialogues.jsonl") in err and "catalog.extra_items_files" in err
    assert not (rd / "catalog" / "manifest.json").exists()

    # the fix the message names: the missing items in an extra items file
    extra = write_custom(tmp_path / "extra.jsonl", [line for line in lines if line not in kept])
    assert main(["catalog", "--run-dir", str(rd), *catalog, f"catalog.extra_items_files=[{extra}]"]) == 0
    assert len(load_catalog(RunDir(rd))) == 20


def test_non_custom_targets_missing_from_the_catalog_are_not_fatal(fixtures_dir: Path, cat_dir: Path,
                                                                    tmp_path: Path) -> None:
    """ReDial/INSPIRED targets outside the catalog are real data (evaluation reports them): no error."""
    rd = RunDir(tmp_path)
    data = [
        "data.format=redial",
        f"data.train_files=[{fixtures_dir / 'redial' / 'kgsf_valid_data.jsonl'}, "
        f"{fixtures_dir / 'redial' / 'ievalm_valid_data.jsonl'}]",
        f"data.movie_names_file={fixtures_dir / 'redial' / 'movies_with_mentions.csv'}",
        "data.dev_fraction=0.3",
    ]
    assert main(["data", "--run-dir", str(rd.path), *data]) == 0
    run(redial_cfg(cat_dir, *data), rd)
    catalog_ids = {i.item_id for i in load_catalog(rd)}
    mentioned = {r["item_id"] for r in read_jsonl(rd.path / "data" / "mentioned_items.jsonl")}
    assert mentioned - catalog_ids  # the fixture catalog really lacks some of them


def test_malformed_id2info(tmp_path: Path) -> None:
    bad = tmp_path / "id2info.json"
    bad.write_text('{"1": {"genre": []}}', encoding="utf-8")
    with pytest.raises(DataError, match="movie '1' has no 'name'"):
        read_id2info(bad)


# --------------------------------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_real_redial_catalog(tmp_path: Path, shared_data: Path) -> None:
    cfg = load_config(
        None,
        [
            "catalog.clean=true",
            f"catalog.items_file={shared_data / 'movies/txy77__iEvaLM-CRS/data/redial/id2info.json'}",
            "catalog.names_file="
            f"{shared_data / 'redial/Kim-Dong-Jun99__ReDial_RecommendationSystem/dataset/movies_with_mentions.csv'}",
        ],
    )
    rd = redial_run(tmp_path)  # no train mentions: owners that only mentions could pick stay undecided
    run(cfg, rd)
    stats = read_json(rd.path / "catalog" / "stats.json")
    assert stats["cleaning"]["items_before"] == 6924
    assert stats["items"] == 6924 - stats["cleaning"]["folded_items"]
    by_id = {i.item_id: i for i in load_catalog(rd)}
    assert by_id["87947"].title == "Why Did I Get Married? (2007)"
    assert all(i.text for i in by_id.values())
    # the user test of 2026-12-05
    aliases = alias_map(by_id.values())
    assert aliases["107018"] == "82894" and aliases["99584"] == "175096"  # "Frozen", "Titanic" (no year)
    assert {aliases.get("123210", "123210"), aliases.get("151348", "151348")} <= set(by_id)  # the 2010 Frozen
    assert "Scorsese" not in by_id["204794"].text and "Director: Martin Scorsese" in by_id["143198"].text
    assert by_id["116076"].meta["card_dropped"].endswith("is the card of Mean Girls (2004)")
    assert "Samuel Bayer" in by_id["119295"].text and "Samuel Bayer" not in by_id["77161"].text  # Elm Street


@pytest.mark.slow
def test_real_redial_catalog_uncleaned(tmp_path: Path, shared_data: Path) -> None:
    cfg = load_config(
        None,
        [
            f"catalog.items_file={shared_data / 'movies/txy77__iEvaLM-CRS/data/redial/id2info.json'}",
            "catalog.names_file="
            f"{shared_data / 'redial/Kim-Dong-Jun99__ReDial_RecommendationSystem/dataset/movies_with_mentions.csv'}",
        ],
    )
    rd = RunDir(tmp_path)
    run(cfg, rd)
    stats = read_json(rd.path / "catalog" / "stats.json")
    assert stats["items"] == 6924
    assert stats["by_source"] == {"id2info": 6583, "names_only": 341}
    assert stats["with_plot"] == 6583 - 132


@pytest.mark.slow
def test_real_inspired_catalog(tmp_path: Path, shared_data: Path) -> None:
    """configs/inspired.yaml's data and catalog stages on the real files (numbers in the title_id issue note)."""
    config = str(Path(__file__).resolve().parents[1] / "configs" / "inspired.yaml")
    rd = RunDir(tmp_path)
    paths = [
        f"data.train_files=[{shared_data / 'inspired/BitbanChou__LLMKB/data/inspired/train_data_dbpedia.jsonl'}]",
        f"data.dev_files=[{shared_data / 'inspired/sweetpeach__Inspired/data/dialog_data/dev.tsv'}]",
        f"catalog.items_file={shared_data / 'movies/txy77__iEvaLM-CRS/data/redial/id2info.json'}",
        f"catalog.kg_dir={shared_data / 'inspired/wxl1999__CFCRS/data/inspired'}",
    ]
    cfg = load_config(config, ["run.show_progress=false", "catalog.clean=true", *paths])
    run_data(cfg, rd)
    run(cfg, rd)
    stats = read_json(rd.path / "catalog" / "stats.json")
    assert (stats["dialogue_items"], stats["kg_new_items"], stats["cleaning"]["items_before"]) == (1693, 76, 1769)
    # cleaning (docs/results/catalog_cleaning.md): 5 items folded, 5 foreign cards dropped (It (1990) had GoodFellas')
    assert (stats["cleaning"]["folded_items"], stats["cleaning"]["cards_dropped"], stats["items"]) == (5, 5, 1764)
    assert (stats["with_genre"], stats["with_people"], stats["with_plot"]) == (1247, 1248, 850)
    assert stats["kg_id_collisions"] == 0 and stats["shared_titles"] == 0
    by_id = {i.item_id: i for i in load_catalog(rd)}
    assert by_id["avengers-2012"].meta["source"] == "dialogues+kg+id2info"
    assert by_id["frozen2-2019"].meta["director"]  # "Frozen II (2019)" in kg.json


@pytest.mark.slow
def test_real_inspired_kg_and_plots(shared_data: Path) -> None:
    info = read_id2info(shared_data / "movies/txy77__iEvaLM-CRS/data/redial/id2info.json")
    kg = read_kg(shared_data / "inspired/wxl1999__CFCRS/data/inspired")
    cfg = load_config(None, [])
    items, stats = inspired_items(InspiredInputs({}, kg, info), cfg.catalog)
    assert len(kg) == len(items) == 1096
    assert stats["kg_titles_exactly_in_id2info"] == 663  # SOURCES.md
    assert 663 <= stats["items_matched_to_id2info"] < 1096
