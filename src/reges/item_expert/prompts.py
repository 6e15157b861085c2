"""Prompts of the Item Generation Expert: a dialogue (and query) plus a numbered candidate list -> one title.

One format for training (`mine` writes it) and inference (`generate`, the server), so the model is asked at test
time exactly what it learnt to answer. It is domain-neutral ("items", not movies: the same prompt serves a books
catalog) and compact, because the candidate list dominates its length:

    system: the instructions (the LLM backends cut long prompts from the left but keep the system message)
    user:   Conversation:            the dialogue tail, `max_context_chars` at most, oldest turns dropped first
            User: ...
            Assistant: ...

            Request: <query>         only when the Query Expert wrote one

            Candidates:
            1. Title (Year) | genre: drama, romance
            2. Title (Year) | genre: comedy | mentioned earlier
            ...

Each candidate is its display title plus a short card of a few attributes (`card_fields`, at most
`MAX_VALUES_PER_FIELD` values each, cut to `max_card_chars`), and "mentioned earlier" when the dialogue already
named the item (`mark_mentioned`): whether the next turn returns to a discussed item or brings a new one is the
decision the retriever's order gets most wrong (on ReDial's tune split its best unmentioned candidate is a target
more often than its top-1, which is mostly a mentioned item). Display titles are unique within a prompt
(`candidate_titles`), so an answer maps back to exactly one item id. Token counts on ReDial with the SmolLM2
tokenizer: see `benchmarks/item_expert.py` and docs/results/item_expert.md (k = 20 fits in 1,024 tokens, k = 50
in 2,048).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reges.errors import ConfigError, DataError
from reges.llm.base import Messages
from reges.records import Item, Turn, mentioned_item_ids
from reges.retrieval.queries import context_to_query
from reges.titles import parse_title, split_year

if TYPE_CHECKING:
    from reges.config import MineConfig

SYSTEM_PROMPT = (
    "You are a recommender. Read the conversation and choose the one candidate the user will like most. "
    "Answer with that candidate's title exactly as written in the list, and nothing else."
)
MAX_VALUES_PER_FIELD = 3
# What `candidate_titles` appends to a title that another candidate shares: " [item_id]".
_ID_SUFFIX = re.compile(r"\s\[[^\[\]]+\]$")


@dataclass(frozen=True)
class PromptFormat:
    """How candidates and the dialogue are shown (the `mine.*` prompt settings, shared by `generate`).

    Attributes:
        card_fields: Item attributes (meta keys, in order) shown after each title.
        max_card_chars: Each candidate's attribute text is cut to this many characters.
        max_context_chars: Characters of dialogue shown (whole turns from the end).
        max_query_chars: Characters of query shown.
        mark_mentioned: Add "mentioned earlier" to the card of a candidate the dialogue already named.

    Example:
        >>> fmt = PromptFormat.from_config(cfg.mine)
        >>> item_prompt(example.context, None, candidates, fmt)
    """

    card_fields: tuple[str, ...] = ("genre",)
    max_card_chars: int = 60
    max_context_chars: int = 1200
    max_query_chars: int = 300
    mark_mentioned: bool = True

    def __post_init__(self) -> None:
        for name in ("max_card_chars", "max_context_chars", "max_query_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"mine.{name} must be >= 1, got {getattr(self, name)}; set it in the YAML")

    @classmethod
    def from_config(cls, cfg: MineConfig) -> PromptFormat:
        return cls(
            tuple(cfg.card_fields), cfg.max_card_chars, cfg.max_context_chars, cfg.max_query_chars, cfg.mark_mentioned
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "card_fields": list(self.card_fields),
            "max_card_chars": self.max_card_chars,
            "max_context_chars": self.max_context_chars,
            "max_query_chars": self.max_query_chars,
            "mark_mentioned": self.mark_mentioned,
        }


def _cut(text: str, max_chars: int) -> str:
    """`text` cut to `max_chars` at a word boundary when one is near, with "..." when cut."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[: max(max_chars - 3, 1)]
    if " " in cut[len(cut) // 2 :]:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:") + "..."


def base_title(item: Item) -> str:
    """"Title (Year)": the catalog title, with the item's year added when the title has none."""
    title = " ".join(item.title.split())
    if item.year is not None and split_year(title)[1] is None:
        return f"{title} ({item.year})"
    return title


def candidate_titles(candidates: Sequence[Item]) -> list[str]:
    """The display title of each candidate, unique within the list, in candidate order.

    Two candidates whose titles match each other (same matching key and year: "Frozen (2010)" twice in ReDial's
    catalog, or "The Matrix (1999)" and "Matrix, The (1999)") both get their item id appended,
    "Frozen (2010) [12345]": constrained decoding needs distinct strings, and a free answer must name one item.

    Raises:
        DataError: An item id appears twice among the candidates.

    Example:
        >>> frozen = [Item("1", "Frozen (2010)", "card"), Item("2", "Frozen (2010)", "card")]
        >>> candidate_titles([*frozen, Item("3", "Up", "card", year=2009)])
        ['Frozen (2010) [1]', 'Frozen (2010) [2]', 'Up (2009)']
    """
    ids = [c.item_id for c in candidates]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"candidate item id {dup!r} appears twice in one candidate list; candidates must be distinct")
    titles = [base_title(c) for c in candidates]
    keys = [parse_title(t) for t in titles]
    return [f"{t} [{c.item_id}]" if keys.count(k) > 1 else t for t, k, c in zip(titles, keys, candidates, strict=True)]


def strip_id_suffix(title: str) -> str:
    """A display title without the " [item_id]" that `candidate_titles` may have added."""
    return _ID_SUFFIX.sub("", title)


def _field_values(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v).strip()]
    return [str(value)] if value is not None else []


MENTIONED_MARK = "mentioned earlier"


def card_line(title: str, item: Item, fmt: PromptFormat, mentioned: bool = False) -> str:
    """One candidate line without its number: "Title (Year) | genre: drama, romance; director: X".

    `mentioned` (with `fmt.mark_mentioned`) appends " | mentioned earlier".
    """
    parts = []
    for name in fmt.card_fields:
        values = _field_values(item.meta.get(name))[:MAX_VALUES_PER_FIELD]
        if values:
            parts.append(f"{name}: {', '.join(values)}")
    attributes = _cut("; ".join(parts), fmt.max_card_chars) if parts else ""
    line = f"{title} | {attributes}" if attributes else title
    return f"{line} | {MENTIONED_MARK}" if mentioned and fmt.mark_mentioned else line


def item_prompt(
    context: list[Turn], query: str | None, candidates: Sequence[Item], fmt: PromptFormat = PromptFormat()
) -> Messages:
    """The chat that asks the Item Expert to pick one of `candidates` for this dialogue.

    Args:
        context: The dialogue before the recommendation, oldest first.
        query: The Query Expert's preference query, or None to show none.
        candidates: The items to choose from, in the order shown (the retriever's order).
        fmt: What each candidate card shows and how much dialogue and query fit.

    Returns:
        [system message, user message]. The answer it asks for is `candidate_titles(candidates)[i]`.

    Raises:
        DataError: No candidates, or an item id twice.

    Example:
        >>> up = Item("7", "Up", "card", 2009, {"genre": ["family"]})
        >>> item_prompt([Turn("user", "A funny one?")], None, [up])[1]["content"]
        'Conversation:\\nUser: A funny one?\\n\\nCandidates:\\n1. Up (2009) | genre: family'
    """
    if not candidates:
        raise DataError("item_prompt got no candidates; the candidate list must hold at least one item")
    titles = candidate_titles(candidates)
    dialogue = context_to_query(context, "full", fmt.max_context_chars)
    sections = [f"Conversation:\n{dialogue}" if dialogue else "Conversation: (none yet)"]
    if query is not None and query.strip():
        sections.append(f"Request: {_cut(query, fmt.max_query_chars)}")
    mentioned = mentioned_item_ids(context)
    lines = [
        f"{i}. {card_line(t, c, fmt, c.item_id in mentioned)}"
        for i, (t, c) in enumerate(zip(titles, candidates, strict=True), 1)
    ]
    sections.append("Candidates:\n" + "\n".join(lines))
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(sections)}]
