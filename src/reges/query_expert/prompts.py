"""Prompts of the Query Expert: the student's (dialogue -> query), the LLM teacher's (dialogue + true item -> query).

The student prompt is the same at training (`distill` writes it into every SFT row) and at inference (`rewrite`,
the server): a short, domain-neutral system message and the dialogue as "User:"/"Assistant:" lines, cut from the
left to `MAX_DIALOGUE_CHARS` so that it fits the training token budget (`train_query.max_prompt_tokens`) whole.
Why a character cut here and not only the token cut of the LoRA loop: that one drops the prompt's first tokens,
which are the system message and the chat template's header; the student would then train on prompts it never
sees at inference.
"""

from __future__ import annotations

from reges.records import Item, Turn
from reges.retrieval.queries import context_to_query

# With the system message and SmolLM2's chat template, the 3,916 distilled ReDial train prompts measured 178 tokens
# (median), 317 (p95) and 404 (max), so `TrainQueryConfig.max_prompt_tokens` (448) holds every one whole.
MAX_DIALOGUE_CHARS = 1000

QUERY_SYSTEM_PROMPT = (
    "Read the conversation between a user and a recommender. Write the user's preferences as a short search query "
    "for a catalog of items: kinds and genres, mood, themes, people and titles the user mentioned or liked, and "
    "constraints such as era or audience. Use only what the conversation says. Answer with the query only."
)

NO_DIALOGUE = "(The conversation has not started yet.)"

TEACHER_SYSTEM_PROMPT = (
    "You write search queries that a retriever uses to find the item a recommender is about to suggest. You see "
    "the conversation and, as a hint, the item that was suggested. Write a concise query of the user's preferences "
    "that the conversation supports (kinds and genres, mood, themes, people and titles the user mentioned or "
    "liked, constraints such as era or audience), choosing and phrasing those that fit the hinted item. Never "
    "write the hinted item's title, and never add names or facts that the conversation does not contain. Answer "
    "with the query only, on one line."
)


def query_prompt(context: list[Turn], max_chars: int = MAX_DIALOGUE_CHARS) -> list[dict[str, str]]:
    """The student's prompt: the system instruction and the dialogue, most recent turns kept.

    Args:
        context: The turns before the recommendation, oldest first.
        max_chars: Dialogue length cap; whole turns are dropped from the left (see `context_to_query`).

    Returns:
        Chat messages: a system message and one user message holding the dialogue.

    Example:
        >>> query_prompt([Turn("user", "Any scary movies like Alien (1979)?")])[1]["content"]
        'User: Any scary movies like Alien (1979)?'
    """
    dialogue = context_to_query(context, "full", max_chars)
    return [
        {"role": "system", "content": QUERY_SYSTEM_PROMPT},
        {"role": "user", "content": dialogue or NO_DIALOGUE},
    ]


def item_hint(item: Item) -> str:
    """An item's card without its title, the hint the LLM teacher gets (so it cannot copy the title from it)."""
    text = item.text
    if text.casefold().startswith(item.title.casefold()):
        text = text[len(item.title) :]
    return text.lstrip(" .:-") or "(no description)"


def teacher_prompt(context: list[Turn], targets: list[Item], max_words: int,
                   max_chars: int = MAX_DIALOGUE_CHARS) -> list[dict[str, str]]:
    """The LLM teacher's prompt: the dialogue and the true item(s) as title-free hints.

    Args:
        context: The turns before the recommendation.
        targets: The items the recommender suggested next (at least one).
        max_words: Length limit stated in the instruction.
        max_chars: Dialogue length cap (as in `query_prompt`).
    """
    dialogue = context_to_query(context, "full", max_chars) or NO_DIALOGUE
    hints = "\n".join(f"- {item_hint(item)}" for item in targets)
    user = (
        f"Conversation:\n{dialogue}\n\nSuggested item (hint only, never name it):\n{hints}\n\n"
        f"Write the query (at most {max_words} words)."
    )
    return [{"role": "system", "content": TEACHER_SYSTEM_PROMPT}, {"role": "user", "content": user}]
