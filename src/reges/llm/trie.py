"""A token trie over candidate answers: which tokens may come next so that the answer stays a candidate.

Constrained decoding in the transformers backend asks the trie, at every step, for the tokens allowed after what
has been generated so far (`prefix_allowed_tokens_fn`). After a complete candidate only the end token is allowed,
unless the candidate is also a prefix of a longer one ("The Matrix" / "The Matrix Reloaded"), in which case both
the end token and the longer candidate's next token are. Every path through the trie spells a candidate, so the
output is a candidate by construction, whatever the model's logits prefer.
"""

from __future__ import annotations

from collections.abc import Sequence


class _Node:
    __slots__ = ("children", "index")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.index: int | None = None  # which sequence ends here


class TokenTrie:
    """Candidate token sequences, each to be followed by `end_id`.

    Args:
        sequences: One token id list per candidate (non-empty, without the end token).
        end_id: The token that ends an answer (the chat template's end-of-turn / EOS token).

    Example:
        >>> trie = TokenTrie([[5, 6], [5, 6, 7]], end_id=2)
        >>> trie.allowed([5, 6])
        [7, 2]
        >>> trie.match([5, 6, 2])
        0
    """

    def __init__(self, sequences: Sequence[Sequence[int]], end_id: int) -> None:
        self.end_id = end_id
        self.root = _Node()
        self.max_len = 0
        for i, seq in enumerate(sequences):
            if not seq:
                raise ValueError(f"candidate {i} has no tokens; every candidate needs at least one token")
            if end_id in seq:
                raise ValueError(f"candidate {i} contains the end token {end_id}; candidates are plain text")
            node = self.root
            for token in seq:
                node = node.children.setdefault(int(token), _Node())
            if node.index is None:  # identical token sequences: the first candidate wins
                node.index = i
            self.max_len = max(self.max_len, len(seq))

    def _walk(self, prefix: Sequence[int]) -> _Node | None:
        node = self.root
        for token in prefix:
            node = node.children.get(int(token))
            if node is None:
                return None
        return node

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that may follow `prefix` (tokens generated so far) and keep the answer a candidate.

        A prefix that already holds the end token is finished: only the end token is allowed (generation pads
        finished rows anyway). A prefix that is on no path of the trie is a bug in the caller.
        """
        prefix = [int(t) for t in prefix]
        if self.end_id in prefix:
            return [self.end_id]
        node = self._walk(prefix)
        assert node is not None, f"prefix {prefix} left the trie"
        allowed = list(node.children)
        if node.index is not None:
            allowed.append(self.end_id)
        return allowed

    def match(self, tokens: Sequence[int]) -> int | None:
        """Index of the candidate that `tokens` spell (up to the first end token), or None."""
        tokens = [int(t) for t in tokens]
        if self.end_id in tokens:
            tokens = tokens[: tokens.index(self.end_id)]
        node = self._walk(tokens)
        return None if node is None else node.index
