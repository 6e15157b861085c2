"""Token trie units: allowed next tokens, prefixes of other candidates, matching, bad input."""

from __future__ import annotations

import pytest

from reges.llm.trie import TokenTrie

END = 2


def test_root_allows_first_tokens_of_all_candidates() -> None:
    trie = TokenTrie([[5, 6], [7], [5, 8, 9]], END)
    assert sorted(trie.allowed([])) == [5, 7]
    assert trie.max_len == 3


def test_shared_prefix_branches_then_forces_end() -> None:
    trie = TokenTrie([[5, 6], [5, 8, 9]], END)
    assert sorted(trie.allowed([5])) == [6, 8]
    assert trie.allowed([5, 6]) == [END]  # complete and nothing longer: only the end token
    assert trie.allowed([5, 8]) == [9]  # [5, 8] is no candidate: the end token is not allowed


def test_candidate_that_is_a_prefix_of_another_allows_end_and_continuation() -> None:
    trie = TokenTrie([[5, 6], [5, 6, 7]], END)
    assert sorted(trie.allowed([5, 6])) == sorted([7, END])
    assert trie.match([5, 6, END]) == 0
    assert trie.match([5, 6, 7, END]) == 1


def test_match_ignores_padding_after_end_and_rejects_partial_paths() -> None:
    trie = TokenTrie([[5, 6], [7]], END)
    assert trie.match([7, END, 0, 0]) == 1
    assert trie.match([5]) is None  # a prefix, not a candidate
    assert trie.match([9]) is None


def test_finished_prefix_only_allows_end() -> None:
    trie = TokenTrie([[5, 6]], END)
    assert trie.allowed([5, 6, END, 0]) == [END]


def test_duplicate_sequences_keep_the_first_index() -> None:
    trie = TokenTrie([[5, 6], [5, 6]], END)
    assert trie.match([5, 6]) == 0


def test_bad_sequences_are_rejected() -> None:
    with pytest.raises(ValueError, match="no tokens"):
        TokenTrie([[5], []], END)
    with pytest.raises(ValueError, match="end token"):
        TokenTrie([[5, END]], END)


def test_prefix_off_the_trie_is_an_internal_error() -> None:
    trie = TokenTrie([[5, 6]], END)
    with pytest.raises(AssertionError):
        trie.allowed([9])
