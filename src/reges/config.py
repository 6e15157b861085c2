"""Strict YAML -> dataclass configs: one frozen dataclass per stage, nested in PipelineConfig.

Unknown keys (with a suggestion), wrong types and bad values raise ConfigError. Overrides are
`section.key=value` strings parsed as YAML scalars. Nothing here reads argv or the environment.

Every range and cross-field check of the config lives in this file and runs when the config is built, so a bad
value stops `reges all` and every stage command before any stage starts: each section checks its own values in
`__post_init__` (the LLM sections are checked by the section holding them, so errors name `llm`, `item_llm` or
`distill.teacher_llm`), and `check_pipeline`, run by `load_config`, checks that the sections agree with each other.
Stage modules keep only the checks of their core functions' arguments (those are called without a config too).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from reges.errors import ConfigError

logger = logging.getLogger(__name__)

# The keys of `data.column_map`: our field names in a custom dialogue line (reges.data.jsonl reads them).
COLUMN_MAP_KEYS = ("dialogue_id", "turns", "role", "content", "item_ids")


def _require(ok: bool, key: str, rule: str, value: Any, fix: str = "") -> None:
    """Raise `<key> must be <rule>, got <value>; <fix>` unless `ok` (NaN fails every comparison, so it fails here)."""
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value!r}; {fix or f'set {key} in the YAML or the override'}")


def _at_least(section: Any, where: str, minimum: int, names: tuple[str, ...], meaning: str = "") -> None:
    """`where.name >= minimum` for each name; `meaning` (e.g. "0 = all") is shown with the rule."""
    rule = f">= {minimum}" + (f" ({meaning})" if meaning else "")
    for name in names:
        value = getattr(section, name)
        _require(value >= minimum, f"{where}.{name}", rule, value)


def _check_splits(splits: list[str], key: str, example: str) -> None:
    if not splits:
        raise ConfigError(f"{key} is empty; list the splits, e.g. {key}={example}")


def _check_lora_steps(section: Any, where: str) -> None:
    """The shared checks of the two LoRA stages (train_query, train_item)."""
    _at_least(section, where, 0, ("max_examples",), "0 = all")
    _at_least(section, where, 1, ("max_prompt_tokens", "r", "batch_size", "grad_accum"))
    _at_least(section, where, 0, ("epochs", "max_steps"))
    _at_least(section, where, 0, ("save_every_steps",), "0 = never")
    if section.epochs == 0 and section.max_steps == 0:
        raise ConfigError(
            f"{where}.epochs and {where}.max_steps are both 0, so nothing would be trained; set {where}.epochs >= 1 "
            f"(passes over the examples) or {where}.max_steps >= 1 (optimizer steps)"
        )
    _require(section.lr > 0, f"{where}.lr", "> 0", section.lr, f"set {where}.lr, e.g. 3e-4")


@dataclass(frozen=True)
class RunConfig:
    """Attributes:
    name: A label for the run (reports, TREC tags).
    seed: Seed for every random choice (splits, sampling, training).
    overwrite: Redo stages that are already complete.
    show_progress: Show tqdm progress bars.
    threads: CPU threads of the whole process: torch's, faiss' and each llama.cpp model's. 0: all cores (torch's
        and faiss' default; llama.cpp models take as many as torch); >= 1: exactly that many. The CLI applies it
        once, before any stage runs or any model loads; library functions never change it. On a CPU shared with
        other busy processes, 1 can be several times faster than 2 (docs/results/retrieval.md). It changes no
        result, so no stage goes stale when it changes. Replaces `llm.threads` and `index.threads`, which are
        still read as deprecated aliases of it (see `move_thread_aliases`).
    """

    name: str = "reges"
    seed: int = 0
    overwrite: bool = False
    show_progress: bool = True
    threads: int = 0

    def __post_init__(self) -> None:
        _at_least(self, "run", 0, ("seed",), "numpy's generators take no negative seed")
        _at_least(self, "run", 0, ("threads",), "0 = all cores")


@dataclass(frozen=True)
class DataConfig:
    """Attributes:
    format: Dataset file format: "redial" (original jsonl, or the iEvaLM variant), "inspired"
        (original tsv, or UniCRS jsonl), "custom" (documented JSONL, see docs/custom_data.md).
    train_files: Files whose dialogues form the train split (duplicates across files are dropped).
    dev_files: Files forming the dev split. Empty: a deterministic `dev_fraction` of the train dialogues.
    test_files: Official test files in their published format (optional).
    dev_fraction: Share of train dialogues held out as dev when `dev_files` is empty.
    tune_fraction: Share of the (remaining) train dialogues held out as the `tune` split: what fusion weights and
        other choices are tuned on, so dev stays untouched. 0: no tune split.
    movie_names_file: ReDial `movies_with_mentions.csv`, to resolve @ids missing from movieMentions.
    lossy_file: ReDial's lossy 10,006-dialog file (precessed.json.zip); "" to skip it.
    column_map: Custom format only: maps our field names to yours (see docs/custom_data.md).
    """

    format: Literal["redial", "inspired", "custom"] = "redial"
    train_files: list[str] = field(default_factory=list)
    dev_files: list[str] = field(default_factory=list)
    test_files: list[str] = field(default_factory=list)
    dev_fraction: float = 0.16
    tune_fraction: float = 0.0
    movie_names_file: str = ""
    lossy_file: str = ""
    column_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # data.train_files is checked by the data stage: the defaults (no files) are a valid config for the others.
        if self.column_map and self.format != "custom":
            raise ConfigError(
                f"data.column_map applies to data.format=custom only, got format={self.format!r}; remove it"
            )
        for key in self.column_map:
            if key not in COLUMN_MAP_KEYS:
                near = difflib.get_close_matches(key, COLUMN_MAP_KEYS, n=1)
                hint = f"did you mean {near[0]}?" if near else f"known keys: {', '.join(COLUMN_MAP_KEYS)}"
                raise ConfigError(
                    f"data.column_map has unknown key {key!r}; the keys are our names, the values yours; {hint}"
                )
        if self.format != "redial" and (self.movie_names_file or self.lossy_file):
            raise ConfigError(
                f"data.movie_names_file and data.lossy_file are ReDial files, got format={self.format!r}; remove them"
            )
        if self.lossy_file and not self.movie_names_file:
            raise ConfigError(
                "data.lossy_file needs data.movie_names_file (movies_with_mentions.csv) to resolve its @ids; set it"
            )
        _require(0.0 <= self.tune_fraction < 1.0, "data.tune_fraction", "in [0, 1)", self.tune_fraction,
                 "e.g. 0.1, or 0 for no tune split")
        if not self.dev_files:
            _require(0.0 < self.dev_fraction < 1.0, "data.dev_fraction", "in (0, 1) when data.dev_files is empty",
                     self.dev_fraction, "set it (e.g. 0.16) or list data.dev_files")


@dataclass(frozen=True)
class CatalogConfig:
    """Attributes:
    format: "redial" (id2info.json + movies_with_mentions.csv), "inspired" (titles in the dialogues +
        CFCRS kg.json + plots from id2info.json), "custom" (an items JSONL).
    items_file: Main metadata file (ReDial/plots: id2info.json; custom: items JSONL).
    names_file: ReDial movies_with_mentions.csv (items known only by name).
    kg_dir: INSPIRED: folder with CFCRS kg.json, entity2id.json, relation2id.json.
    extra_items_files: User item files (custom JSONL items) appended to the catalog.
    card_fields: Attributes, in order, that make up an item's text card.
    max_card_chars: Cards are cut to this length (keeps prompts short).
    fuzzy_threshold: rapidfuzz score (0-100) above which a title matches a catalog title.
    clean: Fold duplicate entries of one film into one item (the other dataset ids kept in `meta.alias_ids`) and
        drop cards that describe another film (docs/results/catalog_cleaning.md); redial and inspired catalogs
        only, custom catalogs are never cleaned. Every stage reads the dialogues' dataset ids through the folded
        items' aliases (`reges.catalog.alias_map`). Off by default: the configs' measured runs and the shipped
        bundle were built on the uncleaned catalog (its dev effect: docs/results/catalog_cleaning.md).
    """

    format: Literal["redial", "inspired", "custom"] = "redial"
    items_file: str = ""
    names_file: str = ""
    kg_dir: str = ""
    extra_items_files: list[str] = field(default_factory=list)
    card_fields: list[str] = field(default_factory=lambda: ["genre", "director", "star", "plot"])
    max_card_chars: int = 600
    fuzzy_threshold: float = 92.0
    clean: bool = False

    def __post_init__(self) -> None:
        # fuzzy_threshold has no range: above 100 turns fuzzy matching off (reges.titles.TitleMatcher).
        _at_least(self, "catalog", 1, ("max_card_chars",))


@dataclass(frozen=True)
class IndexConfig:
    """Attributes:
    encoder: "all-MiniLM-L6-v2" (bundled) or a path to any sentence-transformers model folder.
    index_type: "flat" (exact inner product), "ivf" or "hnsw" (approximate, for large catalogs).
    nlist: IVF cells.
    nprobe: IVF cells searched per query (as built; `retrieve.nprobe` changes it at search time).
    hnsw_m: HNSW graph degree.
    ef_construction: HNSW construction breadth. 200 keeps 0.951 of the exact top-50 at 1e6 items with ef_search
        2048 (11 ms per query); faiss' own default, 40, builds 3.7x faster but needs ef_search 4096 (22 ms) for the
        same recall (docs/results/scale.md). HNSW indexes built before this key existed used 40.
    ef_search: HNSW search breadth (as built; `retrieve.ef_search` changes it at search time).
    batch_size: Cards encoded per batch.
    max_seq_length: Encoder token limit for cards and queries.
    device: "auto", "cpu" or "cuda".
    """

    encoder: str = "all-MiniLM-L6-v2"
    index_type: Literal["flat", "ivf", "hnsw"] = "flat"
    nlist: int = 256
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    batch_size: int = 64
    max_seq_length: int = 256
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        _at_least(self, "index", 1, ("nlist", "nprobe", "ef_construction", "ef_search", "batch_size",
                                     "max_seq_length"))
        _at_least(self, "index", 2, ("hnsw_m",))


@dataclass(frozen=True)
class RetrieveConfig:
    """Attributes:
    splits: Splits to retrieve for.
    query: What the query is: "full" (whole context), "last2" (last two turns).
    top_k: Candidates kept per example.
    batch_size: Queries encoded per batch.
    max_query_chars: Queries longer than this keep their end (the most recent turns).
    fusion: Use the learned retriever of `train-retriever/` (fused scores) when that stage is complete; false, or
        no complete train-retriever: plain dense retrieval with the index encoder (`query`, `max_query_chars`).
    nprobe: IVF cells searched per query, overriding the index's own (`index.nprobe` as built); 0 keeps it.
        Search-time only: changing it never rebuilds an index.
    ef_search: HNSW search breadth, overriding the index's own (`index.ef_search` as built); 0 keeps it. At 1e6
        items 2048 keeps 0.95 of the exact top-50, 128 about half (docs/results/scale.md).
    candidate_pool: With an approximate index (`index.index_type` ivf or hnsw when train-retriever ran), the fused
        retriever scores only this many index hits per dense feature and this many of the most popular items, plus
        the items co-mentioned with the context, instead of the whole catalog; a query whose candidates cannot
        prove their top-k reads deeper, then falls back to whole-catalog scoring. 300: at 1e6 items 10 ms per query
        instead of 171 ms, 0.98 of the whole-catalog top-50 (docs/results/scale_fusion.md). With a flat index the
        whole catalog is scored (exact, and as cheap up to ~1e4 items; 17 ms at 1e5).
    """

    splits: list[str] = field(default_factory=lambda: ["dev"])
    query: Literal["full", "last2"] = "full"
    top_k: int = 50
    batch_size: int = 64
    max_query_chars: int = 2000
    fusion: bool = True
    nprobe: int = 0
    ef_search: int = 0
    candidate_pool: int = 300

    def __post_init__(self) -> None:
        _at_least(self, "retrieve", 1, ("top_k", "batch_size", "max_query_chars", "candidate_pool"))
        _at_least(self, "retrieve", 0, ("nprobe", "ef_search"), "0 = the index's own setting")


@dataclass(frozen=True)
class EvaluateConfig:
    """Attributes:
    splits: Splits to evaluate.
    cutoffs: Recall cutoffs.
    baselines: Retrieval baselines to compute alongside the run's retrieval ("copy": the context's items, most
        recently mentioned first; Kostric & Balog's naive baseline).
    bootstrap: Bootstrap resamples for the 95% confidence intervals.
    oracle_fields: Item attributes (meta keys, in order) the oracle query is built from; never the title.
        The plot is close to the card text, so ["genre", "director", "star"] gives a less trivial ceiling.
    """

    splits: list[str] = field(default_factory=lambda: ["dev"])
    cutoffs: list[int] = field(default_factory=lambda: [1, 5, 10, 20, 50])
    baselines: list[Literal["popularity", "bm25", "dense_full", "dense_last2", "oracle", "copy"]] = field(
        default_factory=lambda: ["popularity", "bm25", "dense_full", "dense_last2", "oracle", "copy"]
    )
    bootstrap: int = 1000
    oracle_fields: list[str] = field(default_factory=lambda: ["genre", "director", "star", "plot"])

    def __post_init__(self) -> None:
        if not self.cutoffs:
            raise ConfigError("evaluate.cutoffs is empty; list at least one cutoff, e.g. [1, 5, 10, 20, 50]")
        bad = [k for k in self.cutoffs if k < 1]
        if bad:
            raise ConfigError(f"evaluate.cutoffs must all be >= 1, got {bad}; remove them from evaluate.cutoffs")
        _at_least(self, "evaluate", 0, ("bootstrap",), "0 = no confidence intervals")
        if "title" in self.oracle_fields:
            raise ConfigError(
                "evaluate.oracle_fields must not contain 'title': the oracle describes, it does not name; remove it"
            )


@dataclass(frozen=True)
class LLMConfig:
    """Attributes:
    model: "smollm2-135m-instruct" (bundled), an HF model folder, a .gguf file, or an http(s) URL of an
        OpenAI-compatible endpoint.
    backend: "hf", "llamacpp" or "openai" ("auto": openai for URLs, hf otherwise).
    device: "auto", "cpu" or "cuda" (hf only).
    dtype: "auto" (bf16 on CUDA and on CPUs with AVX512-BF16/AMX, where it measured faster; else fp32),
        "float32" or "bfloat16".
    n_ctx: Context window in tokens; longer prompts are cut from the left with a warning.
    cache_dir: Where dequantized GGUF models are cached ("" = ~/.cache/reges/models).
    api_model: Model name sent to an OpenAI-compatible endpoint.
    api_key: Key for the endpoint. Better left "" and given by the environment (REGES_API_KEY, else OPENAI_API_KEY)
        or `api_key_file`: a key is never written to a run directory, a manifest or a log (it is stored as "***",
        and a run read back from disk takes its key from the environment).
    api_key_file: A file holding the key (first line; keep it mode 0600).
    timeout_s: Per-request timeout for the endpoint.
    max_retries: Retries on connection errors and 5xx answers before failing.
    batch_size: Prompts per batch (hf generate/choose; concurrent requests for openai).
    api_constraint: How the openai backend restricts `choose` to the candidates: "grammar" (a GBNF `grammar`
        field: llama.cpp server, llama-cpp-python server), "guided_choice" (vLLM < 0.12), "structured_outputs"
        (vLLM >= 0.12) or "none" (free text mapped to the closest candidate with rapidfuzz, with a warning).
    api_template_model: openai backend, `rank` only: a local model (bundled name, HF folder or .gguf) whose chat
        template and EOS token render prompts for /v1/completions; "" disables `rank` on endpoints.
    llamacpp_extra_buffers: Let llama.cpp repack weights into its extra CPU buffer types (AMX tiles, interleaved
        layouts). Off by default: in VMs that advertise AMX without supporting it (ours) the AMX path crashes the
        process (GPF at ldtilecfg) on any prompt longer than one token.
    prompt_lookup_tokens: hf only, greedy generation of a single prompt (one dialogue served): draft up to this
        many tokens by finding the last generated tokens in the prompt and copying what followed them there
        (prompt lookup decoding), then check the draft in one forward pass. The Query Expert copies titles and
        phrases from the dialogue, and on CPU a step is bound by reading the weights, so checking ten tokens costs
        about as much as generating one. The text is greedy decoding's, up to float rounding. 0: off.

    Its values are checked by the section holding it (`PipelineConfig` for llm and item_llm, `DistillConfig` for
    teacher_llm; see `check_llm`), so an error names the key the value was set under.
    """

    model: str = "smollm2-135m-instruct"
    backend: Literal["auto", "hf", "llamacpp", "openai"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    n_ctx: int = 2048
    cache_dir: str = ""
    api_model: str = "default"
    api_key: str = ""
    api_key_file: str = ""
    timeout_s: float = 60.0
    max_retries: int = 2
    batch_size: int = 8
    api_constraint: Literal["grammar", "guided_choice", "structured_outputs", "none"] = "grammar"
    api_template_model: str = ""
    llamacpp_extra_buffers: bool = False
    prompt_lookup_tokens: int = 10


def check_llm(llm: LLMConfig, where: str) -> None:
    """Range checks of an LLM section; `where` is the key it is set under (llm, item_llm, distill.teacher_llm)."""
    _at_least(llm, where, 1, ("n_ctx", "batch_size"))
    _at_least(llm, where, 0, ("max_retries",))
    _at_least(llm, where, 0, ("prompt_lookup_tokens",), "0 = off")
    _require(llm.timeout_s > 0, f"{where}.timeout_s", "> 0 seconds", llm.timeout_s)


# --- Query Expert: distill -> train-query -> rewrite ---------------------------------------------------------------


@dataclass(frozen=True)
class DistillConfig:
    """Attributes:
    splits: Splits the teacher writes pseudo-queries for (train-side only: the teacher sees the true item).
    teacher: "grounded" (offline default: assembles queries from what the dialogue says, choosing and
        ordering it by the true item's card) or "llm" (any `teacher_llm` backend writes candidate queries, which
        are then checked for grounding and title leaks).
    teacher_llm: The LLM used when teacher is "llm" (a large model behind an OpenAI-compatible URL in the
        paper's setting).
    num_queries: Candidate queries per example; retrieval feedback keeps the one ranking the true item best.
    max_query_words: Queries are cut to this many words.
    max_examples: Examples per split given to the teacher (0: all); a seeded sample.
    feedback_top_k: Retrieval feedback search depth: a true item below it counts as not found (and as rank
        feedback_top_k + 1 in the mean rank of stats.json).
    batch_size: Queries per encoder batch in the feedback search.
    teacher_temperature: LLM teacher: sampling temperature of the candidates after the first (greedy) one.
    teacher_max_new_tokens: LLM teacher: most tokens per candidate.
    """

    splits: list[str] = field(default_factory=lambda: ["train"])
    teacher: Literal["grounded", "llm"] = "grounded"
    teacher_llm: LLMConfig = field(default_factory=LLMConfig)
    num_queries: int = 4
    max_query_words: int = 32
    max_examples: int = 0
    feedback_top_k: int = 200
    batch_size: int = 64
    teacher_temperature: float = 0.8
    teacher_max_new_tokens: int = 64

    def __post_init__(self) -> None:
        _check_splits(self.splits, "distill.splits", "[train]")
        _at_least(self, "distill", 1, ("num_queries", "feedback_top_k", "batch_size", "teacher_max_new_tokens"))
        _at_least(self, "distill", 3, ("max_query_words",))
        _at_least(self, "distill", 0, ("max_examples",), "0 = all")
        if self.teacher == "llm" and self.num_queries > 1 and not self.teacher_temperature > 0:
            raise ConfigError(
                f"distill.teacher_temperature must be > 0 to sample {self.num_queries} different candidates, got "
                f"{self.teacher_temperature}; raise it (e.g. 0.8) or set distill.num_queries=1"
            )
        check_llm(self.teacher_llm, "distill.teacher_llm")


@dataclass(frozen=True)
class TrainQueryConfig:
    """Attributes:
    max_examples: Distilled examples used for training (0: all); a seeded sample.
    max_prompt_tokens: Prompt token budget. Prompts are built to fit it (the dialogue is cut to
        query_expert.prompts.MAX_DIALOGUE_CHARS); a longer one would lose its beginning, system message included.
    max_completion_tokens: Query token budget; longer queries lose their end.
    epochs: Passes over the examples (when max_steps is 0).
    max_steps: Optimizer steps; > 0 overrides epochs (for smoke runs and speed measurements).
    lr: Peak learning rate.
    r: LoRA rank.
    alpha: LoRA alpha (the adapter is scaled by alpha / r).
    dropout: Dropout on the LoRA input.
    batch_size: Examples per forward/backward pass.
    grad_accum: Passes per optimizer step.
    save_every_steps: Checkpoint every N optimizer steps, so a killed run resumes (0: never).
    dtype: LoRA training dtype ("auto": bf16 where the CPU/GPU supports it, measured 1.67x faster).
        gradient_checkpointing: Recompute each layer's activations in the backward pass: activation memory from every
        layer's to about one layer's, about a third more compute, the same numbers. For long prompts on a GPU.
    """

    max_examples: int = 0
    max_prompt_tokens: int = 448
    max_completion_tokens: int = 64
    epochs: int = 1
    max_steps: int = 0
    lr: float = 3e-4
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    batch_size: int = 8
    grad_accum: int = 1
    save_every_steps: int = 50
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        _check_lora_steps(self, "train_query")
        _at_least(self, "train_query", 1, ("max_completion_tokens",))
        _require(0.0 <= self.dropout < 1.0, "train_query.dropout", "in [0, 1)", self.dropout, "e.g. 0.05; 0 for none")


@dataclass(frozen=True)
class RewriteConfig:
    """Attributes:
    splits: Splits the trained Query Expert writes a query for (splits the data stage did not write are skipped).
    batch_size: Dialogues per generation call (the hf backend further splits them by llm.batch_size).
    max_new_tokens: Most tokens per query.
    """

    splits: list[str] = field(default_factory=lambda: ["tune", "dev"])
    batch_size: int = 16
    max_new_tokens: int = 48

    def __post_init__(self) -> None:
        _check_splits(self.splits, "rewrite.splits", "[tune, dev]")
        _at_least(self, "rewrite", 1, ("batch_size", "max_new_tokens"))


# --- Learned retriever: train-retriever ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CrossDatasetConfig:
    """Another dataset's train dialogues for the co-mention prior and popularity, matched to this catalog by title.

    Why: INSPIRED has 801 train dialogues, too few for co-mentions (R@50 0.168 alone); ReDial's 10k dialogues
    know which films go together, and films have the same titles in both. Only train-side files belong here:
    never another dataset's test file.

    Attributes:
    format: The other dataset's file format ("redial", "inspired" or "custom").
    files: Its train dialogue files.
    movie_names_file: ReDial `movies_with_mentions.csv` (format redial: resolves @ids to titles).
    lossy_file: ReDial's lossy 10,006-dialog file; its mention sets are counted too ("" to skip).
    column_map: Custom format only (see docs/custom_data.md).
    """

    format: Literal["redial", "inspired", "custom"] = "redial"
    files: list[str] = field(default_factory=list)
    movie_names_file: str = ""
    lossy_file: str = ""
    column_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(bool(self.files), "train_retriever.cross_dataset.files", "a non-empty list of train files",
                 self.files, "list the other dataset's train files, or set train_retriever.cross_dataset: null")
        if self.format == "redial":
            _require(bool(self.movie_names_file), "train_retriever.cross_dataset.movie_names_file",
                     "set for format redial", self.movie_names_file, "point it at movies_with_mentions.csv")
        elif self.lossy_file or self.movie_names_file:
            raise ConfigError(f"train_retriever.cross_dataset.lossy_file and movie_names_file are ReDial files, got "
                              f"format={self.format!r}; remove them")

    def as_data_config(self) -> DataConfig:
        """The loader settings of `data` for these files (what reges.data's readers take)."""
        return DataConfig(format=self.format, movie_names_file=self.movie_names_file, lossy_file=self.lossy_file,
                          column_map=self.column_map)


@dataclass(frozen=True)
class TrainRetrieverConfig:
    """Attributes:
    finetune: Fine-tune the sentence encoder contrastively on (dialogue, true item card) pairs of train (false:
        the frozen index encoder gives the dense features).
    epochs: Fine-tuning passes.
    batch_size: Pairs per in-batch-negatives batch.
    lr: Peak learning rate (linear warmup, then linear decay).
    warmup_ratio: Share of the steps spent warming up.
    hard_negatives: Mined hard negatives per pair, sampled from the frozen encoder's top-50 (0: in-batch only).
    max_pairs: Training pairs used (0: all); a seeded sample, for quick runs.
    lora_rank: 0: fine-tune every weight of the encoder. > 0: train LoRA adapters of this rank instead
        (`encoder.add_lora`; 2.7 MB at 16 instead of a 90 MB encoder, so the tuned retriever can ship in the
        bundle); such adapters need a larger `lr` (e.g. 5e-4).
    distill_pairs: Also train on (teacher pseudo-query, card) pairs from `distill/train.jsonl` when it exists.
    save_every_steps: Checkpoint every N steps so a killed fine-tuning resumes (0: never).
    chunk_size: Texts embedded per forward pass inside a batch, grouped by length (less padding: 2x faster on a
        CPU with 8); 0 embeds the whole batch at once (better on a GPU). The loss is the same either way.
    query: Dialogue text of the dense_dialogue feature and of the training anchors: "full" or "last2".
    max_query_chars: Dialogue text cap (its end is kept); 1000 characters fit MiniLM's 256 tokens.
    max_seq_length: Encoder token limit when fine-tuning and encoding.
    dtype: Compute dtype of fine-tuning. "bfloat16" runs the encoder's forward and backward under autocast while
        the weights, gradients and AdamW state stay float32 (mixed precision); "auto" is bfloat16 on CUDA and on
        CPUs with native bf16 (AVX512-BF16/AMX), else float32. On this 2-core CPU bf16 fine-tuned 1.39x the pairs
        per second with the same losses (docs/results/encoder_finetune.md).
    comention: Use the co-mention prior as a fusion feature.
    content: Use content similarity as a fusion feature: each card's cosine with the mean card of the items the
        dialogue names (same director, stars, genres, plot), for films too rare to have co-mentions.
    people: Use the directors and stars the dialogue names as a fusion feature (`reges.retrieval.people`): their
        films, idf-weighted, for "something with Jim Carrey".
    neighbours: Use the nearest train contexts as a fusion feature (`reges.retrieval.neighbours`): the films
        recommended to the seekers who wrote most alike, by the run's encoder; its neighbour count and temperature
        are chosen on the tune split by the feature alone. With bagged weights it added INSPIRED dev R@50 +0.025
        and nothing on ReDial (+0.01, inside the interval, with neighbours_lossy): docs/results/signals.md.
    neighbours_lossy: Also let the order-free examples of `data/lossy_dialogues.jsonl` vote in the neighbours
        feature (the seeker's messages -> the films only the recommender named, `reges.data.lossy.lossy_examples`):
        8,193 more ReDial dialogues next to the clean train file's. Needs neighbours and `data.lossy_file`.
    neighbours_cross: Also let the cross_dataset's ordered train dialogues vote in the neighbours feature (each
        recommending turn whose films this catalog has, matched by title: `reges.data.cross.cross_examples`). Needs
        neighbours and cross_dataset.
    comention_normalization: "count", "log", "conditional", "cosine" or "pmi" (see retrieval/comention.py).
    use_lossy: Count co-mentions and popularity in `data/lossy_dialogues.jsonl` too, when the data stage wrote it.
    cross_dataset: Also count another dataset's train dialogues, mapped to this catalog by title (null: none).
    cross_pairs: Also fine-tune the encoder on the cross_dataset's ordered train dialogues: (their context, the card
        of the film they recommend, matched by title) pairs (`reges.data.cross.cross_examples`). Needs
        cross_dataset and finetune.
    lossy_pairs: Also fine-tune the encoder on at most this many pairs of the dialogues in
        `data/lossy_dialogues.jsonl` (a seeded sample; 0: none), cut as `lossy_pairs_from` says. Needs finetune
        and `data.lossy_file`.
    lossy_pairs_from: What the lossy pairs are: "seeker_side" (the seeker's whole side -> each film only the
        recommender names, order-free) or "interleaved" (each dialogue's messages put in a guessed speaking order,
        `reges.data.lossy.interleave`, and cut at each recommendation as ordered dialogues are: the anchor is what
        was said before it, measured in `benchmarks/lossy_order.py`). Needs lossy_pairs.
    query_feature: Tune a second weight set with the Query Expert's query (when `rewrite/tune.jsonl` exists).
    popularity: Use log(1 + mention count) as a fusion feature.
    mentioned: Use "already mentioned in the context" as a fusion feature.
    weight_grid: Candidate fusion weights of the coordinate search on the tune split.
    tune_passes: Most coordinate-search passes.
    weight_resamples: 0: one coordinate search on the whole tune split. N >= 2: the search runs on N bootstrap
        resamples of the tune dialogues and the weights are their average (`fusion.bagged_weights`): steadier on
        200-450 tune examples, whose single search lands on one of several near-equal optima
        (docs/results/weight_stability_*.md).
    weight_examples: The examples the no-query weight set is searched on. "tune": the tune split. "train+tune":
        the train split's examples too, 9x as many; their co-mention, popularity and neighbours features leave
        each example's own dialogue out, but the dense features come from an encoder fine-tuned on those very
        examples, so the search sees dense_dialogue stronger than it is on unseen dialogues. Without the Query
        Expert's query it raised INSPIRED dev R@50 by 0.047 [0.017, 0.078] and changed nothing on ReDial
        (docs/results/train_split_fusion_*.md, train_split_weights_inspired.md). The with-query set stays on
        tune (the Query Expert writes no queries for train), so with `query_feature` on and a query for every
        example, as configs/inspired.yaml has, the switch changes nothing that is served.
    cross_fit_folds: With `weight_examples: train+tune`, 0 (off) or k >= 2: the train dialogues are cut into k
        seeded folds and k more encoders are fine-tuned as the run's is, each without one fold's dialogues; a
        train example's dense_dialogue feature in the weight search then comes from the encoder that never saw
        its dialogue, as a dev example's does. Why: the run's own encoder was trained on those examples, so the
        search trusted dense_dialogue too much (INSPIRED: 0.329 on train against 0.196 on tune alone,
        docs/results/train_split_fusion_inspired.md; cross-fitted: 0.245). Costs k - 1 more fine-tunings' worth
        of time; the encoder that serves is the run's own, trained on every train dialogue. On INSPIRED dev with the
        neighbours and bagged weights: R@10 / R@50 0.399 / 0.558, R@50 +0.028 [+0.006, +0.050] over
        configs/inspired.yaml's run (docs/results/cross_fit_weights_inspired_vs_config.md); not a default.
    """

    finetune: bool = True
    epochs: int = 1
    batch_size: int = 32
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    hard_negatives: int = 1
    max_pairs: int = 0
    lora_rank: int = 0
    distill_pairs: bool = True
    save_every_steps: int = 50
    chunk_size: int = 8
    query: Literal["full", "last2"] = "full"
    max_query_chars: int = 1000
    max_seq_length: int = 256
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    comention: bool = True
    content: bool = False
    people: bool = False
    neighbours: bool = False
    neighbours_lossy: bool = False
    neighbours_cross: bool = False
    comention_normalization: Literal["count", "log", "conditional", "cosine", "pmi"] = "conditional"
    use_lossy: bool = True
    cross_dataset: CrossDatasetConfig | None = None
    cross_pairs: bool = False
    lossy_pairs: int = 0
    lossy_pairs_from: Literal["seeker_side", "interleaved"] = "seeker_side"
    query_feature: bool = True
    popularity: bool = True
    mentioned: bool = True
    weight_grid: list[float] = field(
        default_factory=lambda: [-0.5, -0.2, -0.1, -0.05, 0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0]
    )
    tune_passes: int = 3
    weight_resamples: int = 0
    weight_examples: Literal["tune", "train+tune"] = "tune"
    cross_fit_folds: int = 0

    def __post_init__(self) -> None:
        where = "train_retriever"
        _require(self.cross_fit_folds == 0 or self.cross_fit_folds >= 2, f"{where}.cross_fit_folds",
                 "0 (off) or at least 2", self.cross_fit_folds, "e.g. 2")
        if self.cross_fit_folds and (self.weight_examples != "train+tune" or not self.finetune):
            raise ConfigError(f"{where}.cross_fit_folds={self.cross_fit_folds} gives the train examples of the "
                              f"weight search a dense feature from encoders that never saw them, but "
                              f"{where}.weight_examples is {self.weight_examples!r} and finetune is "
                              f"{str(self.finetune).lower()}; set weight_examples: train+tune and finetune: true, "
                              f"or set {where}.cross_fit_folds=0")
        _require(self.weight_resamples == 0 or self.weight_resamples >= 2, f"{where}.weight_resamples",
                 "0 (one search) or at least 2", self.weight_resamples, "e.g. 30")
        _at_least(self, where, 1, ("epochs", "max_query_chars", "max_seq_length", "tune_passes"))
        _at_least(self, where, 2, ("batch_size",), "in-batch negatives need two pairs per batch")
        _at_least(self, where, 0, ("hard_negatives",), "0 = in-batch negatives only")
        _at_least(self, where, 0, ("max_pairs",), "0 = all")
        _at_least(self, where, 0, ("lora_rank",), "0 = full fine-tuning")
        _at_least(self, where, 0, ("lossy_pairs",), "0 = none")
        _at_least(self, where, 0, ("save_every_steps",), "0 = never")
        _at_least(self, where, 0, ("chunk_size",), "0 = whole batches")
        _require(self.lr > 0, f"{where}.lr", "> 0", self.lr, f"set {where}.lr, e.g. 5e-5")
        _require(0.0 <= self.warmup_ratio < 1.0, f"{where}.warmup_ratio", "in [0, 1)", self.warmup_ratio)
        if not self.weight_grid:
            raise ConfigError(f"{where}.weight_grid is empty; list the candidate fusion weights, e.g. [0.0, 0.5, 1.0]")
        if self.cross_pairs and (self.cross_dataset is None or not self.finetune):
            raise ConfigError(f"{where}.cross_pairs=true trains the encoder on {where}.cross_dataset's dialogues, but "
                              f"cross_dataset is {'null' if self.cross_dataset is None else 'set'} and finetune is "
                              f"{str(self.finetune).lower()}; set both (cross_dataset: the other dataset's files, "
                              f"finetune: true), or set {where}.cross_pairs=false")
        for key in ("neighbours_lossy", "neighbours_cross"):
            if getattr(self, key) and not self.neighbours:
                raise ConfigError(f"{where}.{key}=true adds voters to the neighbours feature, but {where}.neighbours "
                                  f"is false; set {where}.neighbours=true or {where}.{key}=false")
        if self.neighbours_cross and self.cross_dataset is None:
            raise ConfigError(f"{where}.neighbours_cross=true lets {where}.cross_dataset's dialogues vote, but "
                              f"cross_dataset is null; set it (the other dataset's files) or set "
                              f"{where}.neighbours_cross=false")
        if self.lossy_pairs and not self.finetune:
            raise ConfigError(f"{where}.lossy_pairs={self.lossy_pairs} trains the encoder, but {where}.finetune is "
                              f"false; set {where}.finetune=true or {where}.lossy_pairs=0")
        if self.lossy_pairs_from != "seeker_side" and not self.lossy_pairs:
            raise ConfigError(f"{where}.lossy_pairs_from={self.lossy_pairs_from!r} says how the lossy pairs are cut, "
                              f"but {where}.lossy_pairs is 0 (none); set {where}.lossy_pairs to how many to train "
                              f"on, or remove {where}.lossy_pairs_from")


# --- Item Generation Expert: mine -> train-item -> generate ---------------------------------------------------------


@dataclass(frozen=True)
class MineConfig:
    """Attributes:
    splits: Splits to build item-expert examples for (`train-item` trains on `train`).
    negatives: "hard" (the first top_k of the retrieval run) or "random" (a seeded random sample of catalog items;
        the ablation).
    top_k: Candidates per example. The training target is the best-ranked target among them; when none was
        retrieved, one target replaces a candidate at a seeded random position (the row says `inserted`).
    query: Whether prompts show the Query Expert's query: "auto" (when `rewrite/{split}.jsonl` exists), "rewrite"
        (required) or "none". `generate` follows the same setting (and, with the adapter, what training saw).
    card_fields: Item attributes (meta keys, in order) shown after each candidate's "Title (Year)". The prompt
        format settings here are shared by `generate`, so train and test prompts are built the same way.
    max_card_chars: Each candidate's attribute text is cut to this many characters.
    max_context_chars: The dialogue tail shown (whole turns from the end; the oldest kept turn may be cut).
    max_query_chars: The query is cut to this many characters.
    mark_mentioned: Mark candidates the dialogue already named ("mentioned earlier" on their card).
    exclude_named: Leave the items the dialogue already named out of the candidates, in training and in `generate`:
        the served setting (the recommender never offers them), so the expert learns to choose among fresh films.
        Training examples whose targets were all named are skipped; under protocol "all" such targets can no
        longer be picked.
    insert_missing: When the retriever did not rank a target within `top_k`, put it in place of a random candidate
        (the paper's recipe: every example trains). False: skip such examples, so the expert trains only on lists
        like those it will see, where the target is one of the retrieved items. Inserted targets are the odd one out
        (on INSPIRED 68 % of the mined examples, and less popular than the hard negatives they join): a 1.5B expert
        trained on them learnt to pick the least popular candidate (docs/results/scaling.md).
    """

    splits: list[str] = field(default_factory=lambda: ["train"])
    negatives: Literal["hard", "random"] = "hard"
    top_k: int = 20
    query: Literal["auto", "rewrite", "none"] = "auto"
    card_fields: list[str] = field(default_factory=lambda: ["genre"])
    max_card_chars: int = 60
    max_context_chars: int = 1200
    max_query_chars: int = 300
    mark_mentioned: bool = True
    exclude_named: bool = False
    insert_missing: bool = True

    def __post_init__(self) -> None:
        _check_splits(self.splits, "mine.splits", "[train]")
        _at_least(self, "mine", 1, ("top_k", "max_card_chars", "max_context_chars", "max_query_chars"))


@dataclass(frozen=True)
class TrainItemConfig:
    """Attributes:
    max_examples: Mined `train` examples used for training (0: all); a seeded sample.
    max_prompt_tokens: Prompt token budget; longer prompts lose their beginning (counted and logged).
    epochs: Passes over the examples (used when max_steps is 0).
    max_steps: Optimizer steps (> 0 overrides epochs).
    lr: Peak learning rate.
    r: LoRA rank (alpha = 2 r).
    batch_size: Examples per forward/backward pass (memory grows with it: batch 4 of ~700-token prompts peaked at
        9.5 GiB RSS on CPU, because the loss takes full-vocabulary logits at every position).
    grad_accum: Passes per optimizer step.
    dtype: LoRA training dtype ("auto": bf16 on CUDA and on CPUs with native bf16, else fp32).
    save_every_steps: Checkpoint every N optimizer steps, so a killed run resumes (0: never).
    objective: "sft" (the loss on the target title's tokens, the paper's recipe) or "listwise" (a softmax over
        every candidate's title log-likelihood towards the target, plus the title's token loss: the hard
        negatives are pushed down explicitly, and training optimises what `generate.mode=rank` scores).
        gradient_checkpointing: Recompute each layer's activations in the backward pass: activation memory from every
        layer's to about one layer's, about a third more compute, the same numbers. For long prompts on a GPU.
    """

    max_examples: int = 0
    max_prompt_tokens: int = 1024
    epochs: int = 1
    max_steps: int = 0
    lr: float = 3e-4
    r: int = 16
    batch_size: int = 2
    grad_accum: int = 4
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    save_every_steps: int = 50
    objective: Literal["sft", "listwise"] = "sft"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        _check_lora_steps(self, "train_item")


@dataclass(frozen=True)
class GenerateConfig:
    """Attributes:
    splits: Splits to pick an item for.
    mode: "free" (greedy title, matched to the candidates, then the catalog), "constrained" (decoding restricted
        to the candidate titles) or "rank" (every candidate scored by likelihood: a full re-ranked list).
    top_k: Candidates shown to the Item Expert (the first top_k of the retrieval run).
    use_adapter: Use the trained item expert (false: the base model, for the untuned comparison).
    max_examples: Examples per split (0: all); a seeded sample, for quick measurements.
    batch_size: Prompts per model call (1: `latency_s` is the latency of one turn).
    max_new_tokens: Free mode: most tokens of the generated title.
    length_normalized: Rank mode: score by mean log-probability per token instead of the total.
    fusion_alpha: Rank mode: the pick maximises (1 - alpha) z(retriever score) + alpha z(LLM log-likelihood), z-scores
        taken within each candidate list; 1 is the Item Expert alone, 0 the retriever's own order. null: tuned on
        `tune_split` (the alpha with the best success rate there; never on dev).
    tune_split: The split fusion_alpha is tuned on (needs data/ and retrieve/ of that split).
    """

    splits: list[str] = field(default_factory=lambda: ["dev"])
    mode: Literal["free", "constrained", "rank"] = "constrained"
    top_k: int = 20
    use_adapter: bool = True
    max_examples: int = 0
    batch_size: int = 8
    max_new_tokens: int = 32
    length_normalized: bool = False
    fusion_alpha: float | None = None
    tune_split: str = "tune"

    def __post_init__(self) -> None:
        _check_splits(self.splits, "generate.splits", "[dev]")
        _at_least(self, "generate", 1, ("top_k", "batch_size", "max_new_tokens"))
        _at_least(self, "generate", 0, ("max_examples",), "0 = all")
        if self.fusion_alpha is not None:
            _require(0.0 <= self.fusion_alpha <= 1.0, "generate.fusion_alpha", "in [0, 1] or null", self.fusion_alpha,
                     "0 is the retriever's order, 1 the Item Expert alone, null tunes it on generate.tune_split")


@dataclass(frozen=True)
class PipelineConfig:
    """The whole pipeline: one section per stage (see configs/*.yaml)."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    # The Item Generation Expert's own LLM (mine's token counts, train-item, generate, serving's pick); null: `llm`.
    # Lets a small fast Query Expert sit next to a bigger Item Expert (docs/results/scaling.md).
    item_llm: LLMConfig | None = None
    distill: DistillConfig = field(default_factory=DistillConfig)
    train_query: TrainQueryConfig = field(default_factory=TrainQueryConfig)
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    train_retriever: TrainRetrieverConfig = field(default_factory=TrainRetrieverConfig)
    mine: MineConfig = field(default_factory=MineConfig)
    train_item: TrainItemConfig = field(default_factory=TrainItemConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def __post_init__(self) -> None:
        check_llm(self.llm, "llm")
        if self.item_llm is not None:
            check_llm(self.item_llm, "item_llm")

    @property
    def item_expert_llm(self) -> LLMConfig:
        """The LLM of the Item Generation Expert: `item_llm` when set, else the shared `llm`."""
        return self.item_llm if self.item_llm is not None else self.llm


def data_splits(data: DataConfig) -> list[str]:
    """The splits the data stage writes: train and dev always, tune when data.tune_fraction > 0, test when
    data.test_files lists files (reges.data.examples)."""
    return ["train", "dev"] + (["tune"] if data.tune_fraction > 0 else []) + (["test"] if data.test_files else [])


def _unwritten(splits: list[str], key: str, written: list[str]) -> None:
    for split in splits:
        if split not in written:
            fix = {
                "tune": "set data.tune_fraction > 0 (e.g. 0.1) to hold out a tune split",
                "test": "list the test files in data.test_files",
            }.get(split, f"use one of {written}")
            raise ConfigError(
                f"{key} has {split!r}, a split the data stage does not write (it writes {written}); {fix}"
            )


def check_pipeline(cfg: PipelineConfig) -> None:
    """Cross-section checks: settings of different stages that must agree for the pipeline to run to its end.

    `load_config` and `config_from_dict` run them after the sections have checked their own values, so `reges all`
    and every stage command refuse such a config before any stage starts. A `PipelineConfig` built in code is
    checked per section only: a test may build one stage's sections over a prepared run directory.

    Not checked here, because the defaults (`load_config(None)`) must stay loadable: data.train_files being empty
    (the data stage says so), and the tune split and train retrieval run that train-retriever and mine need.

    Raises:
        ConfigError: The first disagreement, naming both keys, their values and the fix.
    """
    written = data_splits(cfg.data)
    rc, gc, mc = cfg.retrieve, cfg.generate, cfg.mine
    _unwritten(rc.splits, "retrieve.splits", written)
    _unwritten(mc.splits, "mine.splits", written)
    if "train" not in mc.splits:
        raise ConfigError(
            f"mine.splits={mc.splits} has no 'train', but train-item trains on mine/train.jsonl; add train to "
            "mine.splits"
        )
    if not set(cfg.rewrite.splits) & set(written):
        raise ConfigError(
            f"none of rewrite.splits={cfg.rewrite.splits} is a split the data stage writes (it writes {written}); "
            "list at least one of them, e.g. rewrite.splits=[tune, dev]"
        )
    for key, splits in (("generate.splits", gc.splits), ("evaluate.splits", cfg.evaluate.splits)):
        missing = [s for s in splits if s not in rc.splits]
        if missing:
            raise ConfigError(
                f"{key} has {missing[0]!r} but retrieve.splits={rc.splits} does not, so retrieve/{missing[0]}.trec "
                f"will not exist; add {missing[0]!r} to retrieve.splits"
            )
    if cfg.train_retriever.lossy_pairs and not cfg.data.lossy_file:
        raise ConfigError(
            f"train_retriever.lossy_pairs={cfg.train_retriever.lossy_pairs} trains on the lossy ReDial file's "
            "dialogues, but data.lossy_file is empty; set data.lossy_file to precessed.json.zip (ReDial only) or "
            "train_retriever.lossy_pairs=0"
        )
    depth = max(cfg.evaluate.cutoffs)
    if depth > rc.top_k:
        raise ConfigError(
            f"evaluate.cutoffs go up to {depth} but retrieve.top_k={rc.top_k} keeps only {rc.top_k} candidates per "
            f"example; set retrieve.top_k to {depth} or more, or lower evaluate.cutoffs"
        )

    tuning = gc.mode == "rank" and gc.fusion_alpha is None
    if tuning and (gc.tune_split not in written or gc.tune_split not in rc.splits):
        fixes = [] if gc.tune_split in written else [
            "set data.tune_fraction > 0 (e.g. 0.1)" if gc.tune_split == "tune" else
            "list data.test_files" if gc.tune_split == "test" else f"set generate.tune_split to one of {written}"
        ]
        fixes += [] if gc.tune_split in rc.splits else [f"add {gc.tune_split!r} to retrieve.splits"]
        raise ConfigError(
            f"generate.mode=rank with generate.fusion_alpha=null tunes the alpha on generate.tune_split="
            f"{gc.tune_split!r}, but the data stage writes {written} and retrieve.splits={rc.splits}; "
            f"{' and '.join(fixes)}, or set generate.fusion_alpha (0: the retriever's order, 1: the Item Expert alone)"
        )

    # The Item Expert's prompts show the Query Expert's query when mine.query says so; generate builds its prompts
    # the same way (reges.item_expert.generate.resolve_query_file), so every split it reads needs a rewrite file.
    generate_reads = [*gc.splits, gc.tune_split] if tuning else list(gc.splits)
    if mc.query == "rewrite":
        for what, splits in (("mine.splits has", mc.splits), ("generate reads", generate_reads)):
            missing = [s for s in splits if s not in cfg.rewrite.splits]
            if missing:
                raise ConfigError(
                    f"mine.query=rewrite shows the Query Expert's query in every prompt, but {what} {missing[0]!r} "
                    f"and rewrite.splits={cfg.rewrite.splits} does not; add {missing[0]!r} to rewrite.splits, or set "
                    "mine.query=auto"
                )
    elif mc.query == "auto" and gc.use_adapter and "train" in mc.splits and "train" in cfg.rewrite.splits:
        missing = [s for s in generate_reads if s not in cfg.rewrite.splits]
        if missing:
            raise ConfigError(
                f"mine.query=auto with 'train' in rewrite.splits trains the Item Expert on prompts with a query, so "
                f"generate needs a query for every split it reads, but rewrite.splits={cfg.rewrite.splits} lacks "
                f"{missing[0]!r}; add it to rewrite.splits, or set mine.query=none"
            )


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_EXPONENT_FLOAT = re.compile(r"[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; convert YAML lists/dicts into the declared shapes."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        sections = [a for a in args if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(sections) == 1:
            # a mapping for an optional section (item_llm): its own errors, not "wrong type"
            return _convert(value, sections[0], where)
        errors = []
        for a in args:
            if a is type(None) and value is None:
                return None
            try:
                return _convert(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where} has the wrong type: {value!r} ({'; '.join(errors)})")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {_convert(k, args[0], where): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        # YAML 1.1 reads 5e-4 (no dot) as a string; it is how people write learning rates
        return float(value)
    if tp is Any:
        return value
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}; fix it in the YAML or the override")
    return value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{where}." if where else ""
    for key in values:
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{near[0]}?" if near else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
    kwargs = {k: _convert(v, hints[k], f"{prefix}{k}") for k, v in values.items()}
    return cls(**kwargs)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ["retrieve.top_k=20", ...] into a nested dict (values parsed as YAML scalars)."""
    tree: dict[str, Any] = {}
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} must look like section.key=value, e.g. retrieve.top_k=20")
        key, raw = o.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            problem = str(e).splitlines()[0]
            raise ConfigError(
                f"override {o!r}: the value is not valid YAML ({problem}); quote a string "
                f"({key}='\"...\"'), or write a list as [1, 2]"
            ) from None
        _set_path(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# Sections whose `threads` key once set torch's threads (whichever model loaded last won); now each means run.threads.
THREAD_ALIASES: tuple[tuple[str, ...], ...] = (("llm",), ("item_llm",), ("distill", "teacher_llm"), ("index",))


def move_thread_aliases(tree: dict[str, Any], source: str) -> dict[str, Any]:
    """`tree` with the deprecated `<section>.threads` keys moved to `run.threads` (a copy; `tree` is not changed).

    Older configs, scripts and run directories (every older config.yaml) set `llm.threads`, `item_llm.threads`,
    `distill.teacher_llm.threads` or `index.threads`. A 0, their default, is dropped: run.threads' 0 means the same.
    Another value becomes run.threads, with a warning naming the new key. Call it on each source on its own (the
    YAML file, the overrides), so an override's value beats the file's as any override does.

    Args:
        tree: A config tree as read from YAML (or parsed overrides).
        source: Where the tree came from, for the messages (a file name, "the overrides").

    Raises:
        ConfigError: Two of these keys, or one of them and run.threads, give different non-zero counts.
    """
    out = copy.deepcopy(tree)
    found: dict[str, Any] = {}
    for path in THREAD_ALIASES:
        node: Any = out
        for name in path:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and "threads" in node:
            found[".".join(path) + ".threads"] = node.pop("threads")
    counts = {key: value for key, value in found.items() if value != 0}
    if not counts:
        return out
    if out.get("run") is None:
        out["run"] = {}
    run = out["run"]
    if not isinstance(run, dict):
        return out  # `run` is not a mapping: _build names that error
    value = next(iter(counts.values()))
    given = {**({"run.threads": run["threads"]} if run.get("threads", 0) != 0 else {}), **counts}
    if any(v != value for v in given.values()):
        raise ConfigError(
            f"{source} sets {', '.join(f'{k}={v!r}' for k, v in given.items())}, but the process has one thread "
            f"count: set only run.threads (e.g. run.threads={value!r}) and drop the others"
        )
    logger.warning("%s: %s %s deprecated and now set%s run.threads (the threads of the whole process); write "
                   "run.threads=%s instead", source, " and ".join(counts), "is" if len(counts) == 1 else "are",
                   "s" if len(counts) == 1 else "", value)
    run["threads"] = value
    return out


def config_from_dict(tree: dict[str, Any]) -> PipelineConfig:
    """Build the config from a nested dict: each section checks its values, then `check_pipeline` their agreement."""
    tree = move_thread_aliases(tree, "the config")
    cfg = _build(PipelineConfig, tree, "")
    check_pipeline(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a pipeline config from YAML (or defaults when `path` is None) plus `section.key=value` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}; see configs/ for examples")
        from reges.io import read_text

        try:
            tree = yaml.safe_load(read_text(p)) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {e}") from None
        except RecursionError:
            raise ConfigError(f"{p}: YAML nested too deeply") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
    overriding = move_thread_aliases(parse_overrides(overrides or []), "the overrides")
    tree = _merge(move_thread_aliases(tree, str(path)), overriding)
    return config_from_dict(tree)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
