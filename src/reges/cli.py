"""The `reges` command line: one subcommand per stage, plus `all`.

Usage:
    reges <stage> --config configs/redial.yaml --run-dir runs/redial [section.key=value ...]
    reges all --config configs/inspired.yaml --run-dir runs/inspired
    reges recommend --run-dir runs/inspired "I loved Inception and Interstellar, something mind-bending please"
    reges chat --run-dir runs/inspired
    reges serve --run-dir runs/inspired --port 8000
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from reges.config import PipelineConfig, config_to_dict, load_config
from reges.errors import ConfigError, RegesError, StageNotReadyError
from reges.io import RunDir, RunLock, atomic_open, redact
from reges.llm.distributed import launcher_rank, launcher_world_size
from reges.pipeline import PIPELINE, STAGES, Stage, plan

if TYPE_CHECKING:
    from reges.recommender import Recommendation, Recommender
    from reges.records import Turn
    from reges.server import ServerConfig

logger = logging.getLogger("reges")

def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, default=None,
        help="YAML config (see configs/); default: the run directory's config.yaml, else the defaults",
    )
    p.add_argument("--run-dir", type=Path, required=True, help="run directory (one folder per stage)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. retrieve.top_k=20")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reges", description="ReGeS conversational recommendation, offline.")
    sub = parser.add_subparsers(dest="command", required=True)
    for st in PIPELINE:
        stage = sub.add_parser(st.name, help=st.help)
        _add_common(stage)
        if st.name == "evaluate":
            stage.add_argument(
                "--dataset-file", type=Path, default=None,
                help="evaluate the trained run on this file in its published format (ReDial test_data.jsonl, "
                "INSPIRED test.tsv); results in <run-dir>/eval-<file name>/evaluate/",
            )
    _add_common(sub.add_parser("all", help="run every stage in order, skipping complete ones, redoing stale ones"))
    _add_common(sub.add_parser("status", help="each stage of a run directory: complete, stale (and why) or missing"))
    cache = sub.add_parser("cache", help="list the model cache (dequantised and joined models), or prune it")
    cache.add_argument("--cache-dir", default="", help="the cache root (llm.cache_dir; default ~/.cache/reges/models)")
    cache.add_argument("--prune", type=float, default=None, metavar="GB",
                       help="remove least recently used models until the cache holds at most GB gigabytes")
    cache.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    # Serving: read a run directory, never write it. Models load once per command.
    rec = sub.add_parser("recommend", help="recommend one item for a dialogue; show the query, candidates, latency")
    _add_serving(rec)
    rec.add_argument("message", nargs="?", default=None, help="the user's message (appended after --dialogue)")
    rec.add_argument("--dialogue", type=Path, default=None, help="JSONL of {role, content} messages, oldest first")
    rec.add_argument("--json", action="store_true", help="print the recommendation as JSON")
    _add_serving(sub.add_parser("chat", help="interactive terminal chat that recommends as you talk"))
    serve = sub.add_parser("serve", help="HTTP API (/v1/recommend, OpenAI-compatible /v1/chat/completions), web chat")
    _add_serving(serve)
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--batch-window-ms", type=float, default=5.0, help="how long to collect requests per batch")
    serve.add_argument("--max-batch-size", type=int, default=32, help="most dialogues per batch")
    serve.add_argument("--max-total-chars", type=int, default=16000, help="longest dialogue accepted, in characters")
    serve.add_argument("--max-body-bytes", type=int, default=None, help="largest request body accepted, in bytes")
    return parser


SERVING_COMMANDS = ("recommend", "chat", "serve")
# The stages that train data-parallel under torchrun / accelerate launch (docs/distributed.md).
DISTRIBUTED_STAGES = ("train-query", "train-item", "train-retriever")


def _add_serving(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run-dir", type=Path, default=None,
        help="run directory with at least catalog/ and index/ complete (default: the trained ReDial recommender "
        "shipped with the package)",
    )
    p.add_argument("--top-k", type=int, default=5, help="candidates shown (default 5)")
    p.add_argument(
        "--no-constraints", action="store_true",
        help="keep the retriever's order: do not re-order candidates by the genres the user refuses or asks for, "
        "or for children (reges.retrieval.constraints)",
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override the run's config.yaml, e.g. --override run.threads=1 (repeatable)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def apply_threads(threads: int) -> None:
    """Set the CPU threads of the whole process from `run.threads`; 0 keeps torch's and faiss' defaults (all cores).

    The one place that sets them: library code never calls `torch.set_num_threads`, and llama.cpp models take
    torch's count when they load (`reges.llm.llamacpp`). Called once, after the config is read and before any stage
    runs or any model loads.
    """
    if threads == 0:
        return
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    logger.info("CPU threads: %d (run.threads)", threads)


def _write_config(cfg: PipelineConfig, run_dir: Path) -> None:
    """The run's config.yaml: the config of its latest successful stage, secrets redacted."""
    with atomic_open(run_dir / "config.yaml") as f:
        yaml.safe_dump(redact(config_to_dict(cfg)), f, sort_keys=False, allow_unicode=True)


def _run_stage(stage: Stage, cfg: PipelineConfig, run_dir: RunDir) -> None:
    """Run one stage with its fingerprint handed to `finish`; on success the run's config.yaml is this config.

    The stage sees only the config sections it declares (`stage_config`), so its fingerprint covers what it reads.
    """
    from reges.pipeline import fingerprint, stage_config

    t0 = time.perf_counter()
    logger.info("stage %s: starting", stage.name)
    run_dir.fingerprints[stage.name] = fingerprint(stage, cfg, run_dir)
    importlib.import_module(stage.module).run(stage_config(stage, cfg), run_dir)
    if launcher_rank() == 0:  # under torchrun the other ranks only help with the training
        _write_config(cfg, run_dir.path)
    logger.info("stage %s: done in %.1f s", stage.name, time.perf_counter() - t0)


def _load_stage_config(args: argparse.Namespace, run_dir: RunDir) -> PipelineConfig:
    """--config, else the run directory's own config.yaml (so `reges evaluate --run-dir R` evaluates R as built),
    else the defaults; then the overrides."""
    path = args.config
    if path is None and (run_dir.path / "config.yaml").is_file():
        path = run_dir.path / "config.yaml"
        logger.info("no --config: using %s", path)
    return load_config(path, args.overrides)


def _run_all(cfg: PipelineConfig, run_dir: RunDir) -> None:
    """Every stage in order: complete ones skipped, stale ones (and all downstream) redone, saying why."""
    for stage in PIPELINE:
        # re-planned before each stage: redoing one makes the stages built on it stale
        status, reasons = next((s, r) for st, s, r in plan(cfg, run_dir) if st.name == stage.name)
        if status == "complete" and not cfg.run.overwrite:
            logger.info("stage %s: complete, skipped", stage.name)
            continue
        if status == "stale":
            logger.warning("stage %s: stale (%s); redoing it", stage.name, "; ".join(reasons))
            # its checkpoints were made from other settings or inputs: they must not be resumed
            shutil.rmtree(run_dir.stage_dir(stage.name))
        _run_stage(stage, cfg, run_dir)


def _check_inputs_current(stage: Stage, cfg: PipelineConfig, run_dir: RunDir) -> None:
    """Refuse to build `stage` on a stale input: its result would silently mix two configurations."""
    stale = {st.name: reasons for st, status, reasons in plan(cfg, run_dir) if status == "stale"}
    bad = [name for name in _upstream(stage) if name in stale]
    if bad:
        raise StageNotReadyError(
            f"stage {stage.name} reads {', '.join(bad)}, which no longer match the config "
            f"({'; '.join(stale[bad[0]])}); "
            f"run `reges all --run-dir {run_dir.path}` to rebuild them, or `reges status --run-dir {run_dir.path}`"
        )


def _upstream(stage: Stage) -> list[str]:
    """Every stage `stage` depends on, directly or not."""
    seen: list[str] = []
    todo = list(stage.inputs)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.append(name)
            todo.extend(STAGES[name].inputs)
    return seen


def print_status(cfg: PipelineConfig, run_dir: RunDir) -> None:
    """`reges status`: one line per stage."""
    for stage, status, reasons in plan(cfg, run_dir):
        print(f"{stage.name:<16} {status}" + (f": {'; '.join(reasons)}" if reasons else ""))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `reges` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    quiet = args.command in ("recommend", "chat")  # their output is the answer; model-loading logs only with -v
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet or launcher_rank() > 0 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if args.command in SERVING_COMMANDS:
            return _serving_command(args)
        if args.command == "cache":
            return _cache_command(args)
        run_dir = RunDir(args.run_dir)
        cfg = _load_stage_config(args, run_dir)
        if args.command == "status":
            print_status(cfg, run_dir)
            return 0
        apply_threads(cfg.run.threads)
        run_dir.create()
        if launcher_world_size() > 1 and args.command not in DISTRIBUTED_STAGES:
            raise ConfigError(
                f"`reges {args.command}` runs on one process, but WORLD_SIZE={launcher_world_size()}: start only "
                f"{', '.join(DISTRIBUTED_STAGES)} with torchrun (or accelerate launch), the other stages without it"
            )
        # rank 0 holds the run's lock for the whole job; the other ranks work in the same folder under it
        with RunLock(run_dir) if launcher_rank() == 0 else contextlib.nullcontext():
            if args.command == "all":
                _run_all(cfg, run_dir)
            elif args.command == "evaluate" and args.dataset_file is not None:
                from reges.eval.official_file import evaluate_file

                child = evaluate_file(cfg, run_dir, args.dataset_file)
                print(f"report: {child / 'evaluate' / 'report.md'}")
            else:
                stage = STAGES[args.command]
                _check_inputs_current(stage, cfg, run_dir)
                _run_stage(stage, cfg, run_dir)
    except RegesError as e:
        print(f"reges: error: {e}", file=sys.stderr)
        return 2
    except UnicodeError as e:
        # every file reader decodes strictly and names its file; this catches what a library read on its own
        print(f"reges: error: an input is not valid UTF-8 text ({e}); save it as UTF-8", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reges: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


def _cache_command(args: argparse.Namespace) -> int:
    """`reges cache`: one line per cached model (size, last use), after an optional prune."""
    from reges.llm.models import cache_entries, default_cache_root, prune_cache

    if args.prune is not None:
        for entry in prune_cache(int(args.prune * 1e9), args.cache_dir):
            print(f"removed  {entry.size / 1e9:6.2f} GB  {entry.path.name}")
    entries = cache_entries(args.cache_dir)
    for entry in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))
        print(f"{entry.size / 1e9:6.2f} GB  last used {used}  {entry.path.name}")
    total = sum(e.size for e in entries)
    print(f"{total / 1e9:.2f} GB in {len(entries)} entries under {default_cache_root(args.cache_dir)}")
    return 0


def _serving_command(args: argparse.Namespace) -> int:
    """`recommend`, `chat` and `serve`: load the run directory's recommender once, then answer."""
    # Imported here: the recommender pulls in torch and the retrieval stack, which `reges --help` does not need.
    from reges.recommender import PipelineRecommender

    if args.command in ("recommend", "chat") and not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the weight-loading bar would land in the middle of the answer
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    context = _read_dialogue(args) if args.command == "recommend" else []
    server_cfg = _server_config(args) if args.command == "serve" else None  # bad options fail before models load
    if args.run_dir is None:
        from reges.shipped import default_run_dir

        args.run_dir = default_run_dir()
    config_path = Path(args.run_dir) / "config.yaml"
    if config_path.is_file():  # (from_run_dir names a missing one) read first: threads are set before models load
        apply_threads(load_config(config_path, args.override).run.threads)
    recommender = PipelineRecommender.from_run_dir(args.run_dir, args.override, constraints=not args.no_constraints)
    if args.command == "recommend":
        rec = recommender.recommend(context, args.top_k)
        print(json.dumps(rec.to_dict(), ensure_ascii=False, indent=2) if args.json else format_recommendation(rec))
    elif args.command == "chat":
        chat(recommender, args.top_k)
    else:
        import uvicorn

        from reges.server import create_app, uvicorn_config

        assert server_cfg is not None
        cfg = dataclasses.replace(server_cfg, model_name=recommender.cfg.run.name)
        logger.info("serving %s on http://%s:%d (web chat at /, API under /v1)", cfg.model_name, args.host, args.port)
        app = create_app(recommender, cfg)
        uvicorn.Server(uvicorn_config(app, args.host, args.port, access_log=args.verbose)).run()
    return 0


def _server_config(args: argparse.Namespace) -> ServerConfig:
    """`reges serve`'s options checked up front (a bad port must not cost a model load first)."""
    from reges.server import ServerConfig, check_listen_address

    check_listen_address(args.host, args.port)
    extra = {} if args.max_body_bytes is None else {"max_body_bytes": args.max_body_bytes}
    return ServerConfig(
        default_top_k=args.top_k,
        batch_window_ms=args.batch_window_ms,
        max_batch_size=args.max_batch_size,
        max_total_chars=args.max_total_chars,
        **extra,
    )


def _read_dialogue(args: argparse.Namespace) -> list[Turn]:
    """`reges recommend`'s dialogue: the --dialogue file's messages, then the message argument as a user turn."""
    from reges.errors import DataError
    from reges.io import read_jsonl
    from reges.recommender import check_context, parse_messages
    from reges.records import Turn

    context = parse_messages(read_jsonl(args.dialogue)) if args.dialogue is not None else []
    if args.message and args.message.strip():
        context.append(Turn("user", args.message.strip()))
    if not context:
        raise DataError(
            'nothing to recommend from; give a message (reges recommend --run-dir R "I loved ...") '
            "or --dialogue FILE.jsonl"
        )
    check_context(context)
    return context


def format_recommendation(rec: Recommendation) -> str:
    """The pick, the query, the candidates and the latency, for a terminal."""
    lines = [
        f"pick:       {rec.title}  [{rec.item_id}]",
        f"query:      {rec.query or '- (no Query Expert in this run: the retriever read the dialogue)'}",
        "candidates:",
    ]
    for rank, c in enumerate(rec.candidates, 1):
        mark = "*" if c.item_id == rec.item_id else " "
        lines.append(f"  {mark}{rank:>2}. {c.title}  {c.score:.3f}  [{c.item_id}]")
    lines.append("latency:    " + ", ".join(f"{k} {v:.1f} ms" for k, v in rec.latency_ms.items()))
    return "\n".join(lines)


def chat(recommender: Recommender, top_k: int) -> None:
    """Interactive loop on stdin/stdout, keeping the dialogue across turns.

    It recommends once the user has said something preference-like (`reges.recommender.wants_recommendation`: a
    user turn with a content word) and asks what they like until then. After each pick it asks for feedback; the
    reply goes into the dialogue, so the next pick takes it into account (and never repeats an earlier pick).
    `/reset` forgets the dialogue, `/quit` (or end of input) leaves.
    """
    from reges.recommender import ASK_FOR_PREFERENCES, check_context, wants_recommendation
    from reges.records import Turn

    print("reges chat: tell me what you like. /reset starts over, /quit leaves.")
    history: list[Turn] = []
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print()
            return
        except UnicodeDecodeError:
            print("reges: error: that line is not UTF-8 text; type it again", file=sys.stderr)
            continue
        if text == "/quit":
            return
        if text == "/reset":
            history = []
            print("reges> (dialogue cleared) " + ASK_FOR_PREFERENCES)
            continue
        if text.startswith("/"):
            print(f"reges> unknown command {text!r}; /reset starts over, /quit leaves")
            continue
        if not text:
            continue
        try:
            check_context([Turn("user", text)])
        except RegesError as e:
            print(f"reges: error: {e}", file=sys.stderr)
            continue
        history.append(Turn("user", text))
        if not wants_recommendation(history):
            history.append(Turn("assistant", ASK_FOR_PREFERENCES))
            print(f"reges> {ASK_FOR_PREFERENCES}")
            continue
        try:
            rec = recommender.recommend(history, top_k)
        except RegesError as e:
            history.pop()
            print(f"reges: error: {e}", file=sys.stderr)
            continue
        history.append(Turn("assistant", rec.reply, [rec.item_id]))
        print(f"reges> {rec.reply}")
        print("       candidates: " + "; ".join(f"{c.title} ({c.score:.2f})" for c in rec.candidates))
        print("       Does that fit? Tell me what you think, or /reset to start over.")


if __name__ == "__main__":
    sys.exit(main())
