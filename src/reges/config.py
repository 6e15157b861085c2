"""Strict YAML -> dataclass configs: one frozen dataclass per stage, nested in PipelineConfig.

Unknown keys (with a suggestion), wrong types and bad values raise ConfigError. Overrides are
`section.key=value` strings parsed as YAML scalars. Nothing here reads argv or the environment.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from reges.errors import ConfigError


@dataclass(frozen=True)
class RunConfig:
    """Attributes:
    name: A label for the run (reports, TREC tags).
    seed: Seed for every random choice (splits, sampling, training).
    overwrite: Redo stages that are already complete.
    show_progress: Show tqdm progress bars.
    """

    name: str = "reges"
    seed: int = 0
    overwrite: bool = False
    show_progress: bool = True


@dataclass(frozen=True)
class DataConfig:
    """Attributes:
    format: Dataset file format: "redial" (original jsonl, or the iEvaLM variant), "inspired"
        (original tsv, or UniCRS jsonl), "custom" (documented JSONL, see docs/custom_data.md).
    train_files: Files whose dialogues form the train split (duplicates across files are dropped).
    dev_files: Files forming the dev split. Empty: a deterministic `dev_fraction` of the train dialogues.
    test_files: Official test files in their published format (optional).
    dev_fraction: Share of train dialogues held out as dev when `dev_files` is empty.
    movie_names_file: ReDial `movies_with_mentions.csv`, to resolve @ids missing from movieMentions.
    lossy_file: ReDial's lossy 10,006-dialog file (precessed.json.zip); "" to skip it.
    column_map: Custom format only: maps our field names to yours (see docs/custom_data.md).
    """

    format: Literal["redial", "inspired", "custom"] = "redial"
    train_files: list[str] = field(default_factory=list)
    dev_files: list[str] = field(default_factory=list)
    test_files: list[str] = field(default_factory=list)
    dev_fraction: float = 0.16
    movie_names_file: str = ""
    lossy_file: str = ""
    column_map: dict[str, str] = field(default_factory=dict)


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
    """

    format: Literal["redial", "inspired", "custom"] = "redial"
    items_file: str = ""
    names_file: str = ""
    kg_dir: str = ""
    extra_items_files: list[str] = field(default_factory=list)
    card_fields: list[str] = field(default_factory=lambda: ["genre", "director", "star", "plot"])
    max_card_chars: int = 600
    fuzzy_threshold: float = 92.0


@dataclass(frozen=True)
class IndexConfig:
    """Attributes:
    encoder: "all-MiniLM-L6-v2" (bundled) or a path to any sentence-transformers model folder.
    index_type: "flat" (exact inner product), "ivf" or "hnsw" (approximate, for large catalogs).
    nlist: IVF cells.
    nprobe: IVF cells searched per query.
    hnsw_m: HNSW graph degree.
    ef_search: HNSW search breadth.
    batch_size: Cards encoded per batch.
    max_seq_length: Encoder token limit for cards and queries.
    device: "auto", "cpu" or "cuda".
    threads: torch CPU threads for encoding (0: torch's default, one per core). On a CPU shared with other
        busy processes, 1 can be several times faster than 2 (measured in docs/results/retrieval.md).
    """

    encoder: str = "all-MiniLM-L6-v2"
    index_type: Literal["flat", "ivf", "hnsw"] = "flat"
    nlist: int = 256
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 128
    batch_size: int = 64
    max_seq_length: int = 256
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0


@dataclass(frozen=True)
class RetrieveConfig:
    """Attributes:
    splits: Splits to retrieve for.
    query: What the query is: "full" (whole context), "last2" (last two turns).
    top_k: Candidates kept per example.
    batch_size: Queries encoded per batch.
    max_query_chars: Queries longer than this keep their end (the most recent turns).
    """

    splits: list[str] = field(default_factory=lambda: ["dev"])
    query: Literal["full", "last2"] = "full"
    top_k: int = 50
    batch_size: int = 64
    max_query_chars: int = 2000


@dataclass(frozen=True)
class EvaluateConfig:
    """Attributes:
    splits: Splits to evaluate.
    cutoffs: Recall cutoffs.
    baselines: Retrieval baselines to compute alongside the run's retrieval.
    bootstrap: Bootstrap resamples for the 95% confidence intervals.
    oracle_fields: Item attributes (meta keys, in order) the oracle query is built from; never the title.
        The plot is close to the card text, so ["genre", "director", "star"] gives a less trivial ceiling.
    """

    splits: list[str] = field(default_factory=lambda: ["dev"])
    cutoffs: list[int] = field(default_factory=lambda: [1, 5, 10, 20, 50])
    baselines: list[Literal["popularity", "bm25", "dense_full", "dense_last2", "oracle"]] = field(
        default_factory=lambda: ["popularity", "bm25", "dense_full", "dense_last2", "oracle"]
    )
    bootstrap: int = 1000
    oracle_fields: list[str] = field(default_factory=lambda: ["genre", "director", "star", "plot"])


@dataclass(frozen=True)
class LLMConfig:
    """Attributes:
    model: "smollm2-135m-instruct" (bundled), an HF model folder, a .gguf file, or an http(s) URL of an
        OpenAI-compatible endpoint.
    backend: "hf", "llamacpp" or "openai" ("auto": openai for URLs, hf otherwise).
    device: "auto", "cpu" or "cuda" (hf only).
    dtype: "auto" (bf16 on CUDA and on CPUs with AVX512-BF16/AMX, where it measured faster; else fp32),
        "float32" or "bfloat16".
    threads: CPU threads (0: all cores).
    n_ctx: Context window in tokens; longer prompts are cut from the left with a warning.
    cache_dir: Where dequantized GGUF models are cached ("" = ~/.cache/reges/models).
    api_model: Model name sent to an OpenAI-compatible endpoint.
    api_key: Key for the endpoint ("" for none).
    timeout_s: Per-request timeout for the endpoint.
    max_retries: Retries on connection errors and 5xx answers before failing.
    batch_size: Prompts per batch (hf generate/choose; concurrent requests for openai).
    api_constraint: How the openai backend restricts `choose` to the candidates: "grammar" (a GBNF `grammar`
        field: llama.cpp server, llama-cpp-python server), "guided_choice" (vLLM) or "none" (free text mapped to
        the closest candidate with rapidfuzz, with a warning).
    api_template_model: openai backend, `rank` only: a local model (bundled name, HF folder or .gguf) whose chat
        template and EOS token render prompts for /v1/completions; "" disables `rank` on endpoints.
    llamacpp_extra_buffers: Let llama.cpp repack weights into its extra CPU buffer types (AMX tiles, interleaved
        layouts). Off by default: in VMs that advertise AMX without supporting it (ours) the AMX path crashes the
        process (GPF at ldtilecfg) on any prompt longer than one token.
    """

    model: str = "smollm2-135m-instruct"
    backend: Literal["auto", "hf", "llamacpp", "openai"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    threads: int = 0
    n_ctx: int = 2048
    cache_dir: str = ""
    api_model: str = "default"
    api_key: str = ""
    timeout_s: float = 60.0
    max_retries: int = 2
    batch_size: int = 8
    api_constraint: Literal["grammar", "guided_choice", "none"] = "grammar"
    api_template_model: str = ""
    llamacpp_extra_buffers: bool = False


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


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


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
        _set_path(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(tree: dict[str, Any]) -> PipelineConfig:
    return _build(PipelineConfig, tree, "")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a pipeline config from YAML (or defaults when `path` is None) plus `section.key=value` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}; see configs/ for examples")
        try:
            tree = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
    tree = _merge(tree, parse_overrides(overrides or []))
    return config_from_dict(tree)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
