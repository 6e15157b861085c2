"""The stage plan: which module runs each stage, what it reads, and whether a complete stage is still current.

Each stage declares the stages whose files it reads (`inputs`) and the config sections it reads (`sections`). From
those a stage's *fingerprint* is computed: a hash of its sections (settings that cannot change a result, such as
thread counts or progress bars, left out), the fingerprints its inputs were built with, and the reges version.
`finish` records it in the stage's manifest, so that later a changed setting or a rebuilt input shows as *stale*:
`reges all` then redoes that stage and everything downstream, and `reges status` says why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from reges import __version__
from reges.config import PipelineConfig, config_to_dict
from reges.errors import DataError, UndeclaredSectionError
from reges.io import MANIFEST, RunDir, read_json


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    Attributes:
        name: CLI subcommand and run-directory folder.
        module: Module whose `run(cfg, run_dir)` does the work (imported only when the stage runs).
        help: One line for `reges --help`.
        inputs: Stages whose files it reads (when they are complete, for the optional ones such as rewrite).
        sections: Config sections it reads; "item_llm" means the Item Expert's LLM (`item_llm`, else `llm`);
            "section.key" is one key of a section the stage reads nothing else of. Its `run` sees only these and
            `run` (see `stage_config`), and tests/test_architecture.py checks its module reads no other.
    """

    name: str
    module: str
    help: str
    inputs: tuple[str, ...]
    sections: tuple[str, ...]


PIPELINE: tuple[Stage, ...] = (
    Stage("data", "reges.data.examples", "parse dataset files into dialogues and recommendation examples",
          (), ("data",)),
    Stage("catalog", "reges.catalog", "build the item catalog with text cards", ("data",), ("data", "catalog")),
    Stage("index", "reges.retrieval.index", "embed item cards and build the FAISS index", ("catalog",), ("index",)),
    Stage("distill", "reges.query_expert.distill",
          "teacher writes grounded pseudo-queries, kept by retrieval feedback",
          ("data", "catalog", "index"), ("distill", "index", "retrieve.max_query_chars")),
    Stage("train-query", "reges.query_expert.train", "LoRA-train the Query Expert: dialogue -> pseudo-query",
          ("distill",), ("llm", "train_query")),
    Stage("rewrite", "reges.query_expert.rewrite", "the Query Expert writes a query per example",
          ("data", "train-query"), ("llm", "rewrite")),
    Stage("train-retriever", "reges.retrieval.train", "fine-tune the encoder, fit the co-mention prior, tune fusion",
          ("data", "catalog", "index", "distill", "rewrite"), ("data", "index", "train_retriever")),
    # retrieve also reads the catalog (its aliases); a rebuilt catalog reaches it through index
    Stage("retrieve", "reges.retrieval.retrieve", "retrieve top-k candidates per example (TREC run)",
          ("data", "index", "rewrite", "train-retriever"), ("index", "retrieve")),
    Stage("mine", "reges.item_expert.mining", "item-expert training examples from the retrieved hard negatives",
          ("data", "catalog", "retrieve", "rewrite"), ("item_llm", "mine")),
    Stage("train-item", "reges.item_expert.train", "LoRA-train the Item Generation Expert",
          ("catalog", "mine"), ("item_llm", "train_item")),
    Stage("generate", "reges.item_expert.generate", "the Item Expert picks one candidate per example",
          ("data", "catalog", "retrieve", "rewrite", "train-item"), ("item_llm", "generate", "mine", "catalog")),
    Stage("evaluate", "reges.eval.evaluate", "recall@k with CIs for the run and the baselines; report.md",
          ("data", "catalog", "index", "retrieve", "generate"), ("evaluate", "index", "retrieve")),
)
STAGES: dict[str, Stage] = {s.name: s for s in PIPELINE}


class _Undeclared:
    """Stands in a stage's config view for a section the stage does not declare: reading it raises."""

    def __init__(self, stage: str, section: str) -> None:
        self._stage, self._section = stage, section

    def _refusal(self, what: str) -> UndeclaredSectionError:
        return UndeclaredSectionError(
            f"stage {self._stage!r} reads config section {self._section!r} ({what}), which it does not declare: "
            f"add {self._section!r} to its sections in reges.pipeline.PIPELINE"
        )

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):  # protocol probes (copy, pickle) get the usual answer; no config key starts so
            raise AttributeError(key)
        raise self._refusal(f"{self._section}.{key}")

    def __bool__(self) -> bool:  # `if cfg.item_llm:` reads the section too
        raise self._refusal(f"bool({self._section})")

    def __repr__(self) -> str:
        return f"<config section {self._section!r}, undeclared by stage {self._stage!r}>"


def stage_config(stage: Stage, cfg: PipelineConfig) -> PipelineConfig:
    """The config `stage`'s `run` is given: `cfg` with every section the stage does not declare made unreadable.

    So a stage cannot depend on a setting that is not in its fingerprint (a change to it would not make the stage
    stale). `run` is always readable (seed, overwrite, progress bars, threads). A "section.key" declaration makes
    the whole section readable (tests/test_architecture.py checks that only the key is read). "item_llm" sets
    `item_llm` to the Item Expert's LLM (`item_llm`, else `llm`), so `item_expert_llm` works while `llm` stays
    unreadable unless the stage declares it too.

    Raises:
        UndeclaredSectionError: When the stage reads an undeclared section (naming stage, section and fix).

    Example:
        >>> view = stage_config(STAGES["index"], load_config("configs/tiny.yaml"))
        >>> view.index.encoder  # declared: its value
        >>> view.generate.top_k  # raises UndeclaredSectionError
    """
    visible = {"run"} | {name.split(".", 1)[0] for name in stage.sections}
    # Built field by field, not with dataclasses.replace: that would rerun __post_init__, whose checks would read
    # the hidden sections. `cfg` itself was checked when it was built.
    view = object.__new__(PipelineConfig)
    for f in dataclasses.fields(PipelineConfig):
        value = getattr(cfg, f.name) if f.name in visible else _Undeclared(stage.name, f.name)
        object.__setattr__(view, f.name, value)
    if "item_llm" in visible:
        object.__setattr__(view, "item_llm", cfg.item_expert_llm)
    return view


# Settings that change how fast or how loudly a stage runs, or how it reaches a model, never what it computes.
# (No stage declares the `run` section, so run.threads and run.show_progress never make one stale; run.seed counts.)
VOLATILE_KEYS: dict[str, frozenset[str]] = {
    "llm": frozenset({"timeout_s", "max_retries", "api_key", "api_key_file", "cache_dir", "batch_size"}),
    "item_llm": frozenset({"timeout_s", "max_retries", "api_key", "api_key_file", "cache_dir", "batch_size"}),
    "index": frozenset({"batch_size"}),
    "retrieve": frozenset({"batch_size"}),
    "train_query": frozenset({"save_every_steps", "gradient_checkpointing"}),
    "train_item": frozenset({"save_every_steps", "gradient_checkpointing"}),
    "train_retriever": frozenset({"save_every_steps"}),
    "rewrite": frozenset({"batch_size"}),
    "generate": frozenset({"batch_size"}),
}

# Keys added to a section after runs were first built, with the value that computes what the code did before: at
# that value a key is left out of the section's hash, so upgrading reges does not make existing runs stale (and
# retrain their experts); any other value counts like every other key.
ADDED_KEYS: dict[str, dict[str, Any]] = {
    "retrieve": {"nprobe": 0, "ef_search": 0, "candidate_pool": 300},
    "mine": {"exclude_named": False, "insert_missing": True},
    "train_retriever": {"cross_dataset": None, "cross_pairs": False, "content": False,
                        "people": False, "lora_rank": 0, "lossy_pairs": 0, "lossy_pairs_from": "seeker_side",
                        "weight_resamples": 0, "neighbours": False,
                        "neighbours_lossy": False, "neighbours_cross": False, "weight_examples": "tune",
                        "cross_fit_folds": 0},
}

# Keys that change nothing unless another key of their section has a given value, left out of the hash otherwise:
# an HNSW build setting does not make a flat or IVF index stale (HNSW indexes built before index.ef_construction
# existed used faiss' 40, and now count as stale under the default 200, which is what they are).
INERT_KEYS: dict[str, dict[str, tuple[str, Any]]] = {
    "index": {"ef_construction": ("index_type", "hnsw")},
}

Status = Literal["complete", "stale", "missing"]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _section(cfg: PipelineConfig, name: str) -> dict[str, Any]:
    """A config section without its volatile keys (a nested LLM section, distill.teacher_llm, likewise)."""
    if "." in name:  # one key of a section
        section, key = name.split(".", 1)
        return {key: config_to_dict(getattr(cfg, section))[key]}
    tree = config_to_dict(cfg.item_expert_llm if name == "item_llm" else getattr(cfg, name))
    volatile = VOLATILE_KEYS.get(name, frozenset())
    added = ADDED_KEYS.get(name, {})
    inert = {k for k, (other, value) in INERT_KEYS.get(name, {}).items() if tree.get(other) != value}
    kept = {k: v for k, v in tree.items()
            if k not in volatile and k not in inert and not (k in added and v == added[k])}
    if isinstance(kept.get("teacher_llm"), dict):
        kept["teacher_llm"] = {k: v for k, v in kept["teacher_llm"].items() if k not in VOLATILE_KEYS["llm"]}
    return kept


def _input_digest(run_dir: RunDir, stage: str) -> str | None:
    """The fingerprint an input stage was built with (its manifest's digest), None when it is not complete."""
    if not run_dir.is_complete(stage):
        return None
    manifest = read_json(run_dir.stage_dir(stage) / MANIFEST)
    fingerprint = manifest.get("fingerprint")
    if isinstance(fingerprint, dict) and "digest" in fingerprint:
        return str(fingerprint["digest"])
    # built before fingerprints existed (or by a library call): identify it by its manifest's content
    return "manifest:" + _digest(manifest)


def fingerprint(stage: Stage, cfg: PipelineConfig, run_dir: RunDir) -> dict[str, Any]:
    """What stage `stage` would be built from now: its sections' hashes, its inputs' digests, the code version."""
    parts = {
        "sections": {name: _digest(_section(cfg, name)) for name in stage.sections},
        "seed": cfg.run.seed,
        "inputs": {name: _input_digest(run_dir, name) for name in stage.inputs},
        "version": __version__,
    }
    return {**parts, "digest": _digest(parts)}


def stale_reasons(stage: Stage, cfg: PipelineConfig, run_dir: RunDir) -> list[str]:
    """Why a complete stage no longer matches the config and its inputs ([] when it does, or cannot be told).

    A manifest without a fingerprint (written before fingerprints existed) cannot be compared and counts as
    current.
    """
    recorded = read_json(run_dir.stage_dir(stage.name) / MANIFEST).get("fingerprint")
    if not isinstance(recorded, dict) or "digest" not in recorded:
        return []
    now = fingerprint(stage, cfg, run_dir)
    if now["digest"] == recorded["digest"]:
        return []
    reasons = [
        f"config section {name} changed"
        for name, digest in now["sections"].items()
        if recorded.get("sections", {}).get(name) != digest
    ]
    if recorded.get("seed") != now["seed"]:
        reasons.append(f"run.seed changed ({recorded.get('seed')} -> {now['seed']})")
    reasons += [
        f"input stage {name} was rebuilt" if digest is not None else f"input stage {name} is gone"
        for name, digest in now["inputs"].items()
        if recorded.get("inputs", {}).get(name) != digest
    ]
    if recorded.get("version") != now["version"]:
        reasons.append(f"reges version changed ({recorded.get('version')} -> {now['version']})")
    return reasons or ["fingerprint changed"]


def plan(cfg: PipelineConfig, run_dir: RunDir) -> list[tuple[Stage, Status, list[str]]]:
    """Each stage's status in pipeline order: complete, stale (with the reasons) or missing.

    Staleness flows downstream: a stage whose input is stale is stale too, since it will be rebuilt from new files.
    A complete stage whose output files are damaged is stale, with the damage as its reason.
    """
    out: list[tuple[Stage, Status, list[str]]] = []
    stale: set[str] = set()
    for stage in PIPELINE:
        if not run_dir.is_complete(stage.name):
            out.append((stage, "missing", []))
            continue
        try:
            run_dir.check_files(stage.name)
            reasons = stale_reasons(stage, cfg, run_dir)
        except DataError as e:
            reasons = [str(e)]
        reasons += [f"input stage {name} is stale" for name in stage.inputs if name in stale]
        if reasons:
            stale.add(stage.name)
            out.append((stage, "stale", reasons))
        else:
            out.append((stage, "complete", []))
    return out
