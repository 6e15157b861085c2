"""The records stages exchange: items, turns, dialogues and recommendation examples.

They are plain dataclasses with `to_dict`/`from_dict` so every run-directory file is readable JSONL.
Only the dataset loaders map dataset-specific speaker names (seeker/recommender) to `user`/`assistant`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["user", "assistant"]
ROLES: tuple[str, ...] = ("user", "assistant")


@dataclass
class Item:
    """One catalog entry.

    Attributes:
        item_id: Stable string id (ReDial movieId, or `reges.titles.title_id(title)` for title-keyed datasets).
        title: Display title, usually "Title (Year)".
        text: The item card used for retrieval and prompts; never empty.
        year: Release year when known.
        meta: Structured attributes (genre, director, star, plot, ...), lists of strings or strings.
    """

    item_id: str
    title: str
    text: str
    year: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Item:
        return cls(
            item_id=str(d["item_id"]),
            title=d["title"],
            text=d["text"],
            year=d.get("year"),
            meta=dict(d.get("meta") or {}),
        )


@dataclass
class Turn:
    """One merged turn: consecutive messages of one speaker joined.

    Attributes:
        role: "user" (the seeker) or "assistant" (the recommender).
        content: Text with item mentions resolved to titles.
        item_ids: Items mentioned in this turn, in order of first mention.
    """

    role: Role
    content: str
    item_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Turn:
        return cls(role=d["role"], content=d["content"], item_ids=[str(i) for i in d.get("item_ids", [])])


# Dialogue ids of another dataset's dialogues counted in the co-mention prior (`reges.data.cross`): the fused
# retriever leaves them out of popularity.
CROSS_DIALOGUE_PREFIX = "cross:"


def mentioned_item_ids(context: list[Turn]) -> set[str]:
    """Every item the turns of `context` mention: what the Item Expert's prompt marks as "mentioned earlier", what
    the recommender never recommends again, and what evaluate's "as served" picks skip (one definition for all)."""
    return {item_id for turn in context for item_id in turn.item_ids}


@dataclass
class Dialogue:
    """A whole conversation."""

    dialogue_id: str
    turns: list[Turn]

    def to_dict(self) -> dict[str, Any]:
        return {"dialogue_id": self.dialogue_id, "turns": [t.to_dict() for t in self.turns]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Dialogue:
        return cls(dialogue_id=str(d["dialogue_id"]), turns=[Turn.from_dict(t) for t in d["turns"]])


@dataclass
class RecExample:
    """A recommendation point: the context before an assistant turn that mentions items.

    Attributes:
        example_id: "<dialogue_id>_<turn index>", unique within a split.
        dialogue_id: The dialogue it comes from.
        context: Turns before the recommending turn.
        target_item_ids: Items the assistant mentions in that turn (protocol "all").
        target_mentioned: For each target, whether it was already mentioned in `context`
            (protocol "novel" keeps only targets with False).
        target_titles: The targets' titles as the dataset wrote them (for reports and missing items).
        response: The assistant's turn text (for reference; never shown to a model at test time).
    """

    example_id: str
    dialogue_id: str
    context: list[Turn]
    target_item_ids: list[str]
    target_mentioned: list[bool]
    target_titles: list[str] = field(default_factory=list)
    response: str = ""

    def novel_target_ids(self) -> list[str]:
        """Targets not mentioned earlier in the dialogue."""
        return [i for i, m in zip(self.target_item_ids, self.target_mentioned, strict=True) if not m]

    def to_dict(self) -> dict[str, Any]:
        return {
            "example_id": self.example_id,
            "dialogue_id": self.dialogue_id,
            "context": [t.to_dict() for t in self.context],
            "target_item_ids": self.target_item_ids,
            "target_mentioned": self.target_mentioned,
            "target_titles": self.target_titles,
            "response": self.response,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecExample:
        return cls(
            example_id=str(d["example_id"]),
            dialogue_id=str(d["dialogue_id"]),
            context=[Turn.from_dict(t) for t in d["context"]],
            target_item_ids=[str(i) for i in d["target_item_ids"]],
            target_mentioned=[bool(m) for m in d["target_mentioned"]],
            target_titles=list(d.get("target_titles", [])),
            response=d.get("response", ""),
        )


@dataclass(frozen=True)
class Hit:
    """One retrieved item with its score."""

    item_id: str
    score: float
