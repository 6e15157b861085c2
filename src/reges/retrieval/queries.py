"""Query text for the retriever: a dialogue context rendered as a query, or a stage's written queries read back.

A query is the context rendered one turn per line, `User: ...` / `Assistant: ...`, oldest first. Long
contexts are cut from the left, whole turns at a time, so the most recent turns (what the user is
asking for now) are the ones kept.

`read_queries` reads the query files of `rewrite` and `distill` (`{"example_id", "query"}` rows) for the stages
that show or score those queries (`train-retriever`, `retrieve`, `mine`, `generate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from reges.errors import ConfigError, DataError
from reges.io import read_jsonl
from reges.records import Turn

QueryMode = Literal["full", "last2"]

_SPEAKERS = {"user": "User", "assistant": "Assistant"}


def format_turn(turn: Turn) -> str:
    """One line: "User: <content>" or "Assistant: <content>", inner whitespace collapsed."""
    return f"{_SPEAKERS[turn.role]}: {' '.join(turn.content.split())}"


def context_to_query(context: list[Turn], mode: QueryMode, max_chars: int) -> str:
    """Render a dialogue context as query text.

    Args:
        context: Turns before the recommendation, oldest first.
        mode: "full" keeps every turn, "last2" only the last two turns.
        max_chars: Length cap. Whole turns are dropped from the left until the query fits; if the last
            turn alone is longer, its last `max_chars` characters are kept (cut at a word boundary).

    Returns:
        The query, lines joined by "\\n"; "" for an empty context (callers must handle empty queries).

    Raises:
        ConfigError: unknown mode or `max_chars` < 1.

    Example:
        >>> context_to_query([Turn("user", "Hi! Any comedies?"), Turn("assistant", "Sure.")], "full", 2000)
        'User: Hi! Any comedies?\\nAssistant: Sure.'
    """
    if max_chars < 1:
        raise ConfigError(f"retrieve.max_query_chars must be >= 1, got {max_chars}")
    if mode == "full":
        turns = context
    elif mode == "last2":
        turns = context[-2:]
    else:
        raise ConfigError(f"retrieve.query must be 'full' or 'last2', got {mode!r}")
    lines = [format_turn(t) for t in turns if t.content.strip()]
    kept: list[str] = []
    length = 0
    for line in reversed(lines):
        extra = len(line) + (1 if kept else 0)  # +1 for the newline joining it to the kept lines
        if length + extra > max_chars:
            break
        kept.append(line)
        length += extra
    if not kept and lines:
        tail = lines[-1][-max_chars:]
        if len(lines[-1]) > max_chars and " " in tail:
            tail = tail.split(" ", 1)[1]  # drop the partial first word
        return tail
    return "\n".join(reversed(kept))


def read_queries(path: str | Path) -> dict[str, str]:
    """`{example_id: query}` from `rewrite/{split}.jsonl` or `distill/{split}.jsonl` rows (`{"example_id", "query"}`).

    Raises:
        DataError: A row is not an object with an `example_id` and a string `query`.
    """
    queries: dict[str, str] = {}
    for row in read_jsonl(path):
        if not isinstance(row, dict) or "example_id" not in row or not isinstance(row.get("query"), str):
            raise DataError(
                f"{path}: rows must be {{'example_id', 'query'}} with a string query, got {row!r:.200}; rerun the "
                "stage that wrote it (rewrite or distill)"
            )
        queries[str(row["example_id"])] = row["query"]
    return queries
