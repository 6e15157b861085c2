"""The pipeline in memory, for serving: dialogue -> query -> candidates -> one pick.

`PipelineRecommender.from_run_dir(path)` loads what a run directory holds, once, and composes it. Which parts
run depends on which stages are complete (have a manifest):

    stage            when complete                                    otherwise (the frozen path)
    query            train-query: the Query Expert writes a query      no query ("")
    retrieve         train-retriever: the fused, tuned retriever       frozen index + encoder over the dialogue text
    pick             train-item: the Item Expert picks a candidate     the retriever's top-1

The trained parts are imported lazily, so a module that does not exist yet only matters once its stage does.
Nothing here imports training code (the server test checks `sys.modules`).

The CLI (`reges recommend`, `reges chat`) and the server (`reges serve`) use the same object; the server batches
concurrent requests into one `recommend_many` call.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from reges.catalog import alias_map, canonical_ids, read_catalog
from reges.config import PipelineConfig, load_config
from reges.errors import CatalogError, ConfigError, DataError
from reges.io import RunDir
from reges.linking import TitleSpotter
from reges.records import ROLES, Hit, Item, Turn, mentioned_item_ids
from reges.retrieval.constraints import Constraints, apply_constraints, leading_group_size, parse_constraints
from reges.retrieval.encoder import Encoder
from reges.retrieval.index import ItemIndex
from reges.retrieval.queries import context_to_query
from reges.retrieval.retrieve import load_index_encoder, retrieve

if TYPE_CHECKING:
    from reges.llm import LLM

logger = logging.getLogger(__name__)

# Candidates retrieved per dialogue when constraints may re-order them (films of a refused genre go last, so the
# first top_k come from this deeper list).
CONSTRAINT_DEPTH = 50

# Roles a client may send that carry no dialogue content for the recommender: accepted and skipped (OpenAI clients
# routinely send a system prompt).
IGNORED_ROLES: tuple[str, ...] = ("system", "developer")

ASK_FOR_PREFERENCES = "Tell me about something you enjoyed, or what you are in the mood for, and I'll find a match."


class Candidate(NamedTuple):
    """One retrieved item, as shown to users: id, display title and retrieval score."""

    item_id: str
    title: str
    score: float


@dataclass
class Recommendation:
    """What the recommender answers for one dialogue.

    Attributes:
        item_id: The picked item.
        title: Its display title.
        query: The preference query the Query Expert wrote ("" on the frozen path: the retriever read the dialogue).
        candidates: The retriever's ranking, best first (items already mentioned in the dialogue left out).
        latency_ms: Milliseconds per stage that ran ("query", "retrieve", "pick") and "total". For a batched call
            these are the batch's times: every dialogue of the batch waited that long.
        reply: A short answer text for chat clients.
    """

    item_id: str
    title: str
    query: str
    candidates: list[Candidate]
    latency_ms: dict[str, float]
    reply: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "title": self.title,
            "query": self.query,
            "candidates": [c._asdict() for c in self.candidates],
            "latency_ms": self.latency_ms,
            "reply": self.reply,
        }


class Recommender(Protocol):
    """Anything that recommends one item for a dialogue (the server and the CLI take this shape; tests pass fakes).

    `recommend_many` answers several dialogues in one call (one batch through each model); results are in the
    order of `contexts`. Both raise a `RegesError` subclass for bad input.
    """

    def recommend(self, context: list[Turn], top_k: int) -> Recommendation: ...

    def recommend_many(self, contexts: list[list[Turn]], top_k: int) -> list[Recommendation]: ...


class CandidateRetriever(Protocol):
    """The tuned retriever's shape (`reges.retrieval.fusion.FusedRetriever`): dialogues + queries -> top-k hits."""

    def search(self, contexts: list[list[Turn]], queries: list[str | None], top_k: int) -> list[list[Hit]]: ...


# --- Dialogue input ------------------------------------------------------------------------------------------------


def parse_messages(messages: list[dict[str, Any]]) -> list[Turn]:
    """Chat messages (`{"role", "content"[, "item_ids"]}`) -> dialogue turns, oldest first.

    System and developer messages are skipped; empty-content messages are dropped. `item_ids` is optional: the items
    a turn mentions (clients echo the ids of earlier recommendations so they are not picked again).

    Raises:
        DataError: a message is not a mapping, has an unknown role, or non-string content.
    """
    turns: list[Turn] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(f"message {i} must be an object with role and content, got {message!r}")
        role = message.get("role")
        if role in IGNORED_ROLES:
            continue
        if role not in ROLES:
            raise DataError(
                f"message {i} has role {role!r}; use 'user' or 'assistant' (system messages are accepted and ignored)"
            )
        content = message.get("content")
        if not isinstance(content, str):
            raise DataError(f"message {i} content must be a string, got {type(content).__name__}")
        item_ids = message.get("item_ids") or []
        if not isinstance(item_ids, list) or not all(isinstance(x, str) for x in item_ids):
            raise DataError(f"message {i} item_ids must be a list of strings, got {item_ids!r}")
        if content.strip():
            turns.append(Turn(role, content.strip(), list(item_ids)))
    return turns


def check_context(context: list[Turn]) -> None:
    """Refuse a dialogue the recommender cannot read.

    Raises:
        DataError: no user turn with text (nothing to recommend from), a role other than user/assistant, or text
            that is not valid Unicode (a lone surrogate such as "\\ud800", or undecodable bytes in a command line).
    """
    for i, turn in enumerate(context):
        if turn.role not in ROLES:
            raise DataError(f"turn {i} has role {turn.role!r}; use 'user' or 'assistant'")
        try:
            turn.content.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(
                f"turn {i} is not valid text (code point U+{ord(turn.content[e.start]):04X} at character {e.start} "
                "is a lone surrogate); send UTF-8 text"
            ) from None
    if not any(t.role == "user" and t.content.strip() for t in context):
        raise DataError(
            'the dialogue has no user message with text; send at least one {"role": "user", "content": "..."}'
        )


# Words that say nothing about taste: greetings, fillers, pronouns and other function words.
_NON_CONTENT = frozenset(
    """
    hi hello hey hiya howdy yo greetings morning evening afternoon bye goodbye thanks thank thx cheers ok okay yes
    yeah yep yup nope nah sure cool great good fine nice please pls hmm umm well welcome sorry
    the and but for nor yet not you your yours are was were been being have has had having does did doing
    this that these those there here what which who whom whose when where why how all any both each few more most
    other some such only own same than too very can will just should now with from into onto about again further
    then once our ours they them their theirs his her hers its him she herself himself itself myself yourself
    would could might must shall may also still even ever really quite much many lot lots let lets get got
    out off over under its it's i'm you're what's that's how's doing going today tonight anything something
    everything nothing someone anyone everyone thing things stuff one ones recommend recommendation recommendations
    suggest suggestion suggestions help want need looking look find give tell show idea ideas like
    """.split()
)


def wants_recommendation(context: list[Turn]) -> bool:
    """Whether the user has said something preference-like yet, so recommending makes sense.

    The rule is deliberately simple: at least one user turn contains a content word, i.e. a word of three or more
    letters that is not a greeting, filler or function word (`_NON_CONTENT`). "hi there" or "can you recommend
    something?" do not qualify (the chat asks what they enjoy); "I loved Inception" or "something scary" do. Verbs
    of liking ("loved", "enjoy") count: they come with what was liked.
    """
    for turn in context:
        if turn.role != "user":
            continue
        for word in re.findall(r"[^\W\d_][\w']{2,}", turn.content.lower()):
            if word not in _NON_CONTENT:
                return True
    return False


def reply_text(title: str, query: str, alternatives: list[str]) -> str:
    """The short chat answer: the pick, what it was picked for, and up to two alternatives."""
    text = f"I'd recommend {title}."
    if query:
        text += f" You seem to be after: {query.rstrip('.')}."
    if alternatives:
        text += f" Also worth a look: {' or '.join(alternatives[:2])}."
    return text


# --- The composition -----------------------------------------------------------------------------------------------


class PipelineRecommender:
    """The run directory's trained parts composed into one recommender (see the module docstring for which run).

    Models are loaded once by `from_run_dir` and shared by every call. Calls are not thread-safe: the server runs
    them on one worker thread.

    Example:
        >>> rec = PipelineRecommender.from_run_dir("runs/inspired")
        >>> r = rec.recommend([Turn("user", "I loved Inception, something mind-bending please")], top_k=5)
        >>> r.title, [c.title for c in r.candidates][:2]
        ('Inception (2010)', ['Inception (2010)', 'Interstellar (2014)'])
    """

    def __init__(
        self,
        cfg: PipelineConfig,
        items: list[Item],
        index: ItemIndex | None,
        encoder: Encoder | None,
        query_llm: LLM | None = None,
        fused: CandidateRetriever | None = None,
        item_llm: LLM | None = None,
        item_sees_query: bool = False,
        mention_counts: dict[str, float] | None = None,
        constraints: bool = True,
    ) -> None:
        """Compose already loaded parts (tests build it from fakes; `from_run_dir` from a run directory).

        Args:
            cfg: The run's config (retrieve.query/max_query_chars/batch_size, rewrite.*, generate.*, llm).
            items: The catalog; every id in `index` must be in it.
            index: The frozen item index (the frozen retrieval path and the catalog ids).
            encoder: The encoder that built `index`; None only when `fused` retrieves instead.
            query_llm: The Query Expert (base LLM + train-query adapter), or None.
            fused: A `reges.retrieval.fusion.FusedRetriever`, or None.
            item_llm: The Item Expert (base LLM + train-item adapter), or None.
            item_sees_query: Show the Item Expert the query (only if it was trained with queries in its prompts).
            mention_counts: item id -> training mentions; picks among same-titled films when linking typed titles.
            constraints: Re-order candidates by the genres the seeker refuses or asks for and whether they ask for
                children (`reges.retrieval.constraints`; false: the retriever's order).

        Raises:
            CatalogError: the index holds an item the catalog lacks.
            ConfigError: neither an encoder nor a fused retriever is given.
        """
        self.items = {it.item_id: it for it in items}
        self.aliases = alias_map(self.items.values())  # a cleaned catalog's folded dataset ids -> their item
        if (index is None or encoder is None) and fused is None:
            raise ConfigError("PipelineRecommender needs the index and its encoder, or a fused retriever; got neither")
        missing = [i for i in (index.item_ids if index is not None else []) if i not in self.items]
        if missing:
            raise CatalogError(
                f"{len(missing)} indexed items are not in the catalog (first: {missing[0]!r}); rebuild the index "
                "from this catalog with `reges index --run-dir ... run.overwrite=true`"
            )
        self.cfg = cfg
        self.index = index
        self.encoder = encoder
        self.query_llm = query_llm
        self.fused = fused
        self.item_llm = item_llm
        self.item_sees_query = item_sees_query
        self.spotter = TitleSpotter(items, mention_counts)
        self.constraints = constraints

    @property
    def stages(self) -> dict[str, str]:
        """What each stage runs, for logs, /health and benchmark reports."""
        return {
            "query": "query expert" if self.query_llm is not None else "none (dialogue text)",
            "retrieve": "fused retriever" if self.fused is not None or self.index is None
            else f"frozen {self.index.encoder or 'encoder'}",
            "linking": "catalog titles in typed turns",
            "constraints": "stated genres and audience re-order candidates" if self.constraints else "off",
            "pick": f"item expert ({self.cfg.generate.mode})" if self.item_llm is not None else "retriever top-1",
        }

    @classmethod
    def from_run_dir(cls, path: str | Path, overrides: list[str] | None = None,
                     constraints: bool = True) -> PipelineRecommender:
        """Load every part the run directory has finished (see the module docstring); nothing is written there.

        Args:
            path: A run directory with at least `catalog/` and `index/` complete and its `config.yaml`.
            overrides: `section.key=value` overrides on top of the run's config (e.g. `generate.top_k=10`).
            constraints: Re-order candidates by the seeker's stated genres and audience (see `__init__`).

        Raises:
            ConfigError: no config.yaml in the run directory, or a bad override.
            StageNotReadyError: catalog or index is not complete.
        """
        run_dir = RunDir(path)
        config_path = run_dir.path / "config.yaml"
        if not config_path.is_file():
            raise ConfigError(f"{config_path} not found; point --run-dir at a run directory made by `reges`")
        cfg = load_config(config_path, overrides)
        items = read_catalog(run_dir.require("catalog") / "items.jsonl")
        # The frozen index is needed only without the fused retriever (which carries its own item embeddings).
        rc = cfg.retrieve
        index = (None if run_dir.is_complete("train-retriever")
                 else ItemIndex.load(run_dir.require("index"), rc.nprobe, rc.ef_search))

        query_llm: LLM | None = None
        mention_counts: dict[str, float] = {}
        fused: CandidateRetriever | None = None
        item_llm: LLM | None = None
        item_sees_query = False
        # INTEGRATION POINT (Query Expert): the base LLM with the train-query adapter for the configured backend.
        if run_dir.is_complete("train-query"):
            from reges.llm import load_llm
            from reges.query_expert.rewrite import adapter_for_backend

            adapter = adapter_for_backend(cfg, run_dir.stage_dir("train-query"))
            query_llm = load_llm(cfg.llm, adapter=adapter, seed=cfg.run.seed)
        # INTEGRATION POINT (tuned retriever): fine-tuned encoder + co-mention prior, fused with the tuned weights.
        if run_dir.is_complete("train-retriever"):
            from reges.retrieval.fusion import FusedRetriever

            fused = FusedRetriever.load(run_dir.path, cfg.index.device, rc.nprobe, rc.ef_search, rc.candidate_pool)
            mention_counts = dict(zip(fused.counts.item_ids, fused.counts.item_counts.tolist(), strict=True))
        # INTEGRATION POINT (Item Expert): the base LLM with the train-item adapter (generate.use_adapter=false: the
        # base model); its prompts show the query only when it was trained on prompts with one.
        if run_dir.is_complete("train-item"):
            from reges.item_expert.generate import adapter_path
            from reges.item_expert.prompts import PromptFormat
            from reges.llm import load_llm

            trained = run_dir.manifest("train-item")
            fmt = PromptFormat.from_config(cfg.mine).to_dict()
            if cfg.generate.use_adapter and trained.get("prompt_format") != fmt:
                raise ConfigError(
                    f"the item expert was trained on prompts with {trained.get('prompt_format')}, but the mine.* "
                    f"settings give {fmt}; restore them (or retrain)"
                )
            if cfg.generate.mode == "rank" and cfg.generate.fusion_alpha is None:
                # the alpha the generate stage tuned; the Item Expert alone when there is none
                tuned = run_dir.manifest("generate").get("fusion_alpha") if run_dir.is_complete("generate") else None
                alpha = 1.0 if tuned is None else float(tuned)
                cfg = dataclasses.replace(cfg, generate=dataclasses.replace(cfg.generate, fusion_alpha=alpha))
                logger.info("item expert: rank mode, fusion alpha %.2f", alpha)
            if cfg.generate.mode == "rank" and cfg.generate.fusion_alpha == 0:
                # weight 0 on the LLM's scores: the fused order is the retriever's, so running the LLM is pure cost
                logger.info("item expert: fusion alpha 0, so the pick is the retriever's top-1 and it is not loaded")
            else:
                adapter = adapter_path(cfg, run_dir) if cfg.generate.use_adapter else None
                item_llm = load_llm(cfg.item_expert_llm, adapter=adapter, seed=cfg.run.seed)
                item_sees_query = bool(trained.get("query_used")) and query_llm is not None
        encoder = load_index_encoder(index, cfg.index) if index is not None else None
        recommender = cls(cfg, items, index, encoder, query_llm, fused, item_llm, item_sees_query, mention_counts,
                          constraints)
        logger.info("recommender from %s: %s", run_dir.path, recommender.stages)
        return recommender

    def recommend(self, context: list[Turn], top_k: int) -> Recommendation:
        """Recommend one item for one dialogue (see `recommend_many`)."""
        return self.recommend_many([context], top_k)[0]

    def recommend_many(self, contexts: list[list[Turn]], top_k: int) -> list[Recommendation]:
        """Recommend one item per dialogue, each model running once over the whole batch.

        Args:
            contexts: Dialogues, oldest turn first; each needs a user turn with text.
            top_k: Candidates returned per dialogue (the Item Expert still sees `generate.top_k` of them).

        Returns:
            One `Recommendation` per dialogue, in order. Items already mentioned in a dialogue (the `item_ids` of its
            turns: what the user named, what was recommended before) are left out of its candidates and never
            picked: a user who loved X wants something else, and a rejected pick must not come back. (Evaluation
            protocol "novel" makes the same point.) Turns sent without ids are linked first: catalog titles
            typed in `content` count as mentioned (`reges.linking.TitleSpotter`).

        Raises:
            ConfigError: `top_k` < 1.
            DataError: a dialogue without user text.
        """
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        for context in contexts:
            check_context(context)
        if not contexts:
            return []
        contexts = [self.link_titles(c) for c in contexts]
        latency: dict[str, float] = {}
        t0 = time.perf_counter()

        queries = self._write_queries(contexts)
        if self.query_llm is not None:
            latency["query"] = _ms_since(t0)

        t = time.perf_counter()
        # every film of a named title: a user who named or rejected "Titanic" means the title, not the id linked
        excluded = [self.spotter.same_title_ids(mentioned_item_ids(c)) for c in contexts]
        pick_k = self.cfg.generate.top_k if self.item_llm is not None else 1
        wanted = [parse_constraints(c) if self.constraints else Constraints() for c in contexts]
        # deeper when constraints re-order: the films that replace the refused ones must be among the hits
        depth = max(top_k, pick_k, CONSTRAINT_DEPTH if any(wanted) else 0) + max(len(e) for e in excluded)
        rankings = [
            apply_constraints([h for h in hits if h.item_id not in ex], want, self.items)[: max(top_k, pick_k)]
            for hits, ex, want in zip(self._retrieve(contexts, queries, depth), excluded, wanted, strict=True)
        ]
        latency["retrieve"] = _ms_since(t)
        for ranking, ex in zip(rankings, excluded, strict=True):
            if not ranking:
                raise DataError(
                    f"every item the retriever returned was already mentioned in this dialogue ({len(ex)} items); "
                    "start a new dialogue"
                )

        t = time.perf_counter()
        # the pick stays among the films that meet the stated constraints best (the first group of the re-ordering)
        pick_lists = [r[: max(1, min(pick_k, leading_group_size(r, want, self.items)))]
                      for r, want in zip(rankings, wanted, strict=True)]
        picks = self._pick(contexts, queries, pick_lists)
        latency["pick"] = _ms_since(t)
        latency["total"] = _ms_since(t0)

        results = []
        for query, ranking, pick in zip(queries, rankings, picks, strict=True):
            candidates = [Candidate(h.item_id, self.items[h.item_id].title, round(h.score, 6)) for h in ranking]
            picked = candidates[pick]
            alternatives = [c.title for c in candidates[:top_k] if c.item_id != picked.item_id]
            results.append(
                Recommendation(
                    item_id=picked.item_id,
                    title=picked.title,
                    query=query,
                    candidates=candidates[:top_k],
                    latency_ms=dict(latency),
                    reply=reply_text(picked.title, query, alternatives),
                )
            )
        return results

    def link_titles(self, context: list[Turn]) -> list[Turn]:
        """Fill in the item ids of turns that name catalog titles but carry no ids (typed text, not a dataset).

        Turns that already have ids (dataset dialogues, clients that send them) keep them, a folded dataset id
        mapped to its item (a cleaned catalog), so that the film still counts as named.
        """
        return [Turn(t.role, t.content, canonical_ids(t.item_ids, self.aliases)) if t.item_ids
                else Turn(t.role, t.content, self.spotter.spot(t.content)) for t in context]

    def _write_queries(self, contexts: list[list[Turn]]) -> list[str]:
        """The Query Expert's preference query per dialogue; "" per dialogue on the frozen path."""
        if self.query_llm is None:
            return [""] * len(contexts)
        # INTEGRATION POINT (Query Expert): batched generation with the run's rewrite settings.
        from reges.query_expert.rewrite import rewrite_queries

        rc = self.cfg.rewrite
        return rewrite_queries(self.query_llm, contexts, rc.batch_size, rc.max_new_tokens)

    def _retrieve(self, contexts: list[list[Turn]], queries: list[str], top_k: int) -> list[list[Hit]]:
        """Top-k hits per dialogue: the fused retriever, or dense retrieval of the query (else the dialogue text)."""
        if self.fused is not None:
            # INTEGRATION POINT (tuned retriever).
            return self.fused.search(contexts, [q or None for q in queries], top_k)
        assert self.encoder is not None  # checked in __init__
        rc = self.cfg.retrieve
        texts = {
            str(i): query or context_to_query(context, rc.query, rc.max_query_chars)
            for i, (context, query) in enumerate(zip(contexts, queries, strict=True))
        }
        ranking = retrieve(texts, self.index, self.encoder, top_k, rc.batch_size)
        return [ranking[str(i)] for i in range(len(contexts))]

    def _pick(self, contexts: list[list[Turn]], queries: list[str], candidates: list[list[Hit]]) -> list[int]:
        """Position of the picked item in each dialogue's candidates: the Item Expert's choice, else 0 (top-1)."""
        if self.item_llm is None:
            return [0] * len(contexts)
        # INTEGRATION POINT (Item Expert): the prompts and settings of the generate stage.
        from reges.item_expert.generate import pick_items
        from reges.item_expert.prompts import PromptFormat, candidate_titles, item_prompt

        gc = self.cfg.generate
        fmt = PromptFormat.from_config(self.cfg.mine)
        shown = [[self.items[h.item_id] for h in hits] for hits in candidates]
        prompts = [
            item_prompt(context, query if self.item_sees_query else None, items, fmt)
            for context, query, items in zip(contexts, queries, shown, strict=True)
        ]
        titles = [candidate_titles(items) for items in shown]
        picks = pick_items(
            self.item_llm, prompts, titles, gc.mode, gc.max_new_tokens, gc.batch_size, gc.length_normalized
        )
        if gc.mode == "rank":  # the generate stage's fusion of the expert's and the retriever's scores
            from reges.item_expert.generate import fuse_pick

            alpha = 1.0 if gc.fusion_alpha is None else gc.fusion_alpha
            picks = [
                fuse_pick(pick, t, [h.score for h in hits], alpha)
                for pick, t, hits in zip(picks, titles, candidates, strict=True)
            ]
        positions = []
        for pick in picks:
            if pick.index is None:  # only in generate.mode=free: an answer that names no candidate
                logger.warning(
                    "the item expert answered %r, which names no candidate; serving the retriever's top-1 "
                    "(serve with generate.mode=constrained to rule this out)",
                    pick.text,
                )
            positions.append(0 if pick.index is None else pick.index)
        return positions


def _ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)
