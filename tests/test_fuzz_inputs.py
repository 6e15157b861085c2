"""Every file a user hands to the CLI, damaged at random: each reader either reads it or raises a RegesError (which
the CLI prints as one line and exit 2), never anything else (a traceback for the user)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reges.config import load_config
from reges.data.inspired import load_inspired
from reges.data.jsonl import load_custom
from reges.data.redial import load_redial, read_movie_names
from reges.errors import RegesError
from reges.io import read_json, read_jsonl, read_trec
from reges.recommender import check_context, parse_messages

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def _head(path: Path, lines: int = 30) -> bytes:
    return b"".join(path.read_bytes().splitlines(keepends=True)[:lines])


def _dialogue(path: Path) -> Any:
    context = parse_messages(read_jsonl(path))
    if context:
        check_context(context)
    return context


def _books_items(path: Path) -> Any:
    from reges.catalog import read_custom_items
    from reges.config import CatalogConfig

    return read_custom_items(path, CatalogConfig(format="custom"))


# (name, original bytes, reader); each reader is what a CLI command runs on that file before any model loads
SOURCES: list[tuple[str, Callable[[], bytes], Callable[[Path], Any]]] = [
    ("config.yaml", lambda: (REPO / "configs/tiny.yaml").read_bytes(), load_config),
    ("redial.jsonl", lambda: _head(FIXTURES / "redial/ievalm_valid_data.jsonl", 3), lambda p: load_redial(p, {})),
    ("movies.csv", lambda: _head(FIXTURES / "catalog/movies_with_mentions.csv"), read_movie_names),
    ("inspired.tsv", lambda: _head(FIXTURES / "inspired/dev.tsv"), load_inspired),
    ("custom.jsonl", lambda: _head(REPO / "examples/books/dialogues.jsonl", 5), load_custom),
    ("items.jsonl", lambda: _head(REPO / "examples/books/items.jsonl", 10), _books_items),
    ("dialogue.jsonl", lambda: b'{"role": "user", "content": "I loved Alien"}\n'
                               b'{"role": "assistant", "content": "Try Aliens (1986)"}\n', _dialogue),
    ("fusion.json", lambda: (REPO / "src/reges/shipped/redial/train-retriever/fusion.json").read_bytes(), read_json),
    ("run.trec", lambda: b"q1 Q0 a 1 0.5 t\nq1 Q0 b 2 0.25 t\nq2 Q0 c 1 0.1 t\n", read_trec),
]


def _mutations(data: bytes, rng: random.Random, n: int) -> list[bytes]:
    """Truncations, flipped bytes, inserted invalid UTF-8, random garbage, and emptiness."""
    out = [b"", data[: len(data) // 2], data[:1]]
    for _ in range(n):
        kind = rng.randrange(4)
        buf = bytearray(data)
        if kind == 0 and buf:  # truncate anywhere
            buf = buf[: rng.randrange(len(buf))]
        elif kind == 1 and buf:  # flip a few bytes
            for _ in range(rng.randint(1, 5)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif kind == 2:  # invalid UTF-8 or a lone surrogate's bytes in the middle
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\ud800", b"\x00"])
        else:  # garbage
            buf = bytearray(rng.randbytes(rng.randint(1, 200)))
        out.append(bytes(buf))
    return out


@pytest.mark.parametrize("name,original,reader", SOURCES, ids=[s[0] for s in SOURCES])
def test_damaged_input_files_raise_only_reges_errors(
    name: str, original: Callable[[], bytes], reader: Callable[[Path], Any], tmp_path: Path
) -> None:
    rng = random.Random(name)
    failures = []
    for i, data in enumerate(_mutations(original(), rng, 40)):
        path = tmp_path / f"{i}-{name}"
        path.write_bytes(data)
        try:
            reader(path)
        except RegesError:
            pass
        except Exception as e:  # noqa: BLE001 - what the test is looking for
            failures.append(f"{path.name}: {type(e).__name__}: {e} <- {data[:80]!r}")
    assert not failures, "\n".join(failures[:10])
