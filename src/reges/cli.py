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
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from reges.config import PipelineConfig, config_to_dict, load_config
from reges.errors import ConfigError, RegesError
from reges.io import RunDir, atomic_open

if TYPE_CHECKING:
    from reges.recommender import Recommendation, Recommender
    from reges.records import Turn

logger = logging.getLogger("reges")

# The pipeline, in order: (stage name = CLI subcommand = run-dir folder, module whose `run(cfg, run_dir)` does it).
# Modules are imported only when their stage runs, so `reges --help` stays fast.
PIPELINE: list[tuple[str, str, str]] = [
    ("data", "reges.data.examples", "parse dataset files into dialogues and recommendation examples"),
    ("catalog", "reges.catalog", "build the item catalog with text cards"),
    ("index", "reges.retrieval.index", "embed item cards and build the FAISS index"),
    ("distill", "reges.query_expert.distill", "teacher writes grounded pseudo-queries, kept by retrieval feedback"),
    ("train-query", "reges.query_expert.train", "LoRA-train the Query Expert: dialogue -> pseudo-query"),
    ("rewrite", "reges.query_expert.rewrite", "the Query Expert writes a query per example"),
    ("train-retriever", "reges.retrieval.train", "fine-tune the encoder, fit the co-mention prior, tune fusion"),
    ("retrieve", "reges.retrieval.retrieve", "retrieve top-k candidates per example (TREC run)"),
    ("mine", "reges.retrieval.mining", "item-expert training examples from the retrieved hard negatives"),
    ("train-item", "reges.item_expert.train", "LoRA-train the Item Generation Expert"),
    ("generate", "reges.item_expert.generate", "the Item Expert picks one candidate per example"),
    ("evaluate", "reges.eval.evaluate", "recall@k with CIs for the run and the baselines; report.md"),
]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="YAML config (see configs/)")
    p.add_argument("--run-dir", type=Path, required=True, help="run directory (one folder per stage)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. retrieve.top_k=20")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reges", description="ReGeS conversational recommendation, offline.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, _, help_text in PIPELINE:
        stage = sub.add_parser(name, help=help_text)
        _add_common(stage)
        if name == "evaluate":
            stage.add_argument(
                "--dataset-file", type=Path, default=None,
                help="evaluate the trained run on this file in its published format (ReDial test_data.jsonl, "
                "INSPIRED test.tsv); results in <run-dir>/eval-<file name>/evaluate/",
            )
    _add_common(sub.add_parser("all", help="run every stage in order, skipping complete ones"))

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
    return parser


SERVING_COMMANDS = ("recommend", "chat", "serve")


def _add_serving(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run-dir", type=Path, default=None,
        help="run directory with at least catalog/ and index/ complete (default: the trained ReDial recommender "
        "shipped with the package)",
    )
    p.add_argument("--top-k", type=int, default=5, help="candidates shown (default 5)")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override the run's config.yaml, e.g. --override llm.threads=1 (repeatable)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _write_config(cfg: PipelineConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(run_dir / "config.yaml") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False, allow_unicode=True)


def _run_stage(name: str, module: str, cfg: PipelineConfig, run_dir: RunDir) -> None:
    t0 = time.perf_counter()
    logger.info("stage %s: starting", name)
    importlib.import_module(module).run(cfg, run_dir)
    logger.info("stage %s: done in %.1f s", name, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `reges` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    quiet = args.command in ("recommend", "chat")  # their output is the answer; model-loading logs only with -v
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if args.command in SERVING_COMMANDS:
            return _serving_command(args)
        cfg = load_config(args.config, args.overrides)
        run_dir = RunDir(args.run_dir)
        _write_config(cfg, run_dir.path)
        if args.command == "all":
            for name, module, _ in PIPELINE:
                if run_dir.is_complete(name) and not cfg.run.overwrite:
                    logger.info("stage %s: complete, skipped", name)
                    continue
                _run_stage(name, module, cfg, run_dir)
        elif args.command == "evaluate" and args.dataset_file is not None:
            from reges.eval.test_file import evaluate_file

            child = evaluate_file(cfg, run_dir, args.dataset_file)
            print(f"report: {child / 'evaluate' / 'report.md'}")
        else:
            module = dict((n, m) for n, m, _ in PIPELINE)[args.command]
            _run_stage(args.command, module, cfg, run_dir)
    except RegesError as e:
        print(f"reges: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reges: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
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
    if args.run_dir is None:
        from reges.shipped import default_run_dir

        args.run_dir = default_run_dir()
    recommender = PipelineRecommender.from_run_dir(args.run_dir, args.override)
    if args.command == "recommend":
        rec = recommender.recommend(context, args.top_k)
        print(json.dumps(rec.to_dict(), ensure_ascii=False, indent=2) if args.json else format_recommendation(rec))
    elif args.command == "chat":
        chat(recommender, args.top_k)
    else:
        import uvicorn

        from reges.server import ServerConfig, create_app, uvicorn_config

        cfg = ServerConfig(
            model_name=recommender.cfg.run.name,
            default_top_k=args.top_k,
            batch_window_ms=args.batch_window_ms,
            max_batch_size=args.max_batch_size,
            max_total_chars=args.max_total_chars,
        )
        logger.info("serving %s on http://%s:%d (web chat at /, API under /v1)", cfg.model_name, args.host, args.port)
        app = create_app(recommender, cfg)
        uvicorn.Server(uvicorn_config(app, args.host, args.port, access_log=args.verbose)).run()
    return 0


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
    from reges.recommender import ASK_FOR_PREFERENCES, wants_recommendation
    from reges.records import Turn

    print("reges chat: tell me what you like. /reset starts over, /quit leaves.")
    history: list[Turn] = []
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print()
            return
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
