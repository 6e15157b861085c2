"""Genre words: how people name the catalog's genres (IMDb genre names, lower case).

One vocabulary for the two places that read genres in a dialogue: the grounded teacher (which genres a pseudo-query
may name) and the stated constraints of the served recommender (which genres a seeker refuses or asks for).
"""

from __future__ import annotations

# The catalog genres that a word can name by itself ("music" is left out: "I loved the music" is no wish for a
# concert film).
GENRE_NAMES: tuple[str, ...] = (
    "action", "adventure", "animation", "biography", "comedy", "crime", "documentary", "drama", "family",
    "fantasy", "history", "horror", "musical", "mystery", "romance", "sci-fi", "sport", "thriller", "war", "western",
)

# Colloquial words -> catalog genres.
GENRE_SYNONYMS: dict[str, str] = {
    "scary": "horror", "scare": "horror", "scared": "horror", "scares": "horror", "creepy": "horror",
    "spooky": "horror", "frightening": "horror", "terrifying": "horror", "slasher": "horror", "gore": "horror",
    "funny": "comedy", "hilarious": "comedy", "humor": "comedy", "humour": "comedy", "laugh": "comedy",
    "laughs": "comedy", "comedic": "comedy", "comedies": "comedy", "romcom": "romance", "rom-com": "romance",
    "romantic": "romance", "love story": "romance", "chick flick": "romance", "sci fi": "sci-fi",
    "scifi": "sci-fi", "science fiction": "sci-fi", "animated": "animation", "cartoon": "animation",
    "cartoons": "animation", "anime": "animation", "pixar": "animation", "kids": "family", "kid": "family",
    "children": "family", "child": "family", "suspense": "thriller", "suspenseful": "thriller",
    "thrilling": "thriller", "documentaries": "documentary", "biopic": "biography", "biopics": "biography",
    "true story": "biography", "historical": "history", "sports": "sport", "musicals": "musical",
    "westerns": "western", "cowboy": "western", "cowboys": "western", "mysteries": "mystery",
    "detective": "mystery", "whodunit": "mystery", "magic": "fantasy", "magical": "fantasy", "action packed": "action",
    "dramatic": "drama", "dramas": "drama", "adventures": "adventure", "war movies": "war", "gangster": "crime",
    "heist": "crime",
}


def genre_words() -> dict[str, str]:
    """Every genre name and colloquial word -> the catalog genre it names."""
    return {**{g: g for g in GENRE_NAMES}, **GENRE_SYNONYMS}
