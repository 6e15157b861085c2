"""The end-to-end report: one table and two plots per dataset, from files the pipeline and the benchmarks wrote.

Per dataset (`--runs name=run_dir ...`) it reads, for one split (default dev):
    R/evaluate/metrics.json                        splits.<split>.<method>.<protocol>.recall@k.{mean,ci_low,ci_high}
                                                   (baselines and the shipped `retrieve` stage) and
                                                   end_to_end.<split>.methods.<method>.<protocol>.success_rate...
    <ablation-dir>/retrieval_ablation_<name>.json  benchmarks/retrieval_ablation.py: results.<method>.<protocol>
    <ablation-dir>/item_expert_<name>.json         benchmarks/item_expert.py: runs[] (variant, mode, top_k) and
                                                   retriever_top1.<k> (means only: no CIs on its slices)
    --variant-runs name:label=run_dir (optional)  more trained runs of a dataset (e.g. random negatives): their
                                                   end-to-end pick rows, labelled "[label]"
Every input that is missing (or was made for another split) is skipped, and the report says so; no number is made
up or carried over from elsewhere. Cutoffs an input did not compute show as "-".

Table rows: the baselines (popularity, bm25, dense_full, dense_last2, oracle), the ablation rows (frozen, tuned,
co-mention, fused without and with the student query, the teacher-query upper bound), the shipped retrieve stage,
and the end-to-end pick (the retriever's top-1 vs the Item Expert, per mode and k). Columns: R@1, R@10, R@50 for
protocols all and novel with 95% CIs; a pick row has its success rate (the single pick is a target) in the R@1
columns, since a one-item list has no deeper cutoff.

Plots next to --out: `recall_at_k_<name>.png` (Recall@k per method, panels all/novel) and `success_vs_k_<name>.png`
(pick success vs candidate-list size k, from the item_expert JSON). The collected rows also go to --out with .json.

Usage:
    .venv/bin/python benchmarks/end_to_end_report.py --runs redial=runs/redial inspired=runs/inspired \\
        --ablation-dir docs/results --out docs/results/end_to_end.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reges.errors import ConfigError
from reges.io import machine_info

logger = logging.getLogger("end_to_end_report")

PROTOCOLS = ("all", "novel")
CUTOFFS = (1, 10, 50)
BASELINES = ("popularity", "bm25", "dense_full", "dense_last2", "oracle")
SHIPPED = "retrieve"
ABLATION_METHODS = (
    "popularity", "frozen_full", "frozen_last2", "tuned_full", "comention", "fused_no_query", "student_query",
    "fused_student_query", "teacher_query",
)  # fmt: skip
DESCRIPTIONS = {
    "popularity": "train mention counts (ties at random, seeded)",
    "bm25": "BM25 over item cards, query = full dialogue",
    "dense_full": "frozen index encoder, query = full dialogue",
    "dense_last2": "frozen index encoder, query = last two turns",
    "oracle": "frozen encoder, query = the target's attributes (never its title): a reference, not a system",
    "frozen_full": "frozen index encoder over the full dialogue (2000 chars)",
    "frozen_last2": "frozen index encoder over the last two turns",
    "tuned_full": "the train-retriever encoder over the dialogue text",
    "comention": "the co-mention prior alone",
    "fused_no_query": "tuned fusion without the Query Expert's query",
    "student_query": "tuned encoder over the Query Expert's query alone",
    "fused_student_query": "tuned fusion with the student query",
    "teacher_query": "tuned encoder over the teacher's query: the upper bound for the student",
    "retrieve": "the run's retrieve stage (retrieve/*.trec), what the pipeline ships",
    "retriever_top1": "the retriever's first candidate",
    "item_expert": "the Item Expert's pick among the k candidates (rank mode: fused with the retriever's score)",
    "item_expert_alone": "rank mode: the Item Expert's own first choice, before fusion",
    "retriever_top1_unmentioned": "as served: the retriever's first candidate the dialogue has not named yet",
    "item_expert_unmentioned": "as served, rank mode: the first not-yet-named candidate of the fused ranking",
}


@dataclass(frozen=True)
class Cell:
    """One number of the table: a mean with its 95% CI (None where the source has no CI)."""

    mean: float
    ci_low: float | None = None
    ci_high: float | None = None

    def render(self) -> str:
        if self.ci_low is None or self.ci_high is None:
            return f"{self.mean:.3f}"
        return f"{self.mean:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"


@dataclass
class Row:
    """One table row.

    Attributes:
        group: "baseline", "ablation", "shipped" or "pick".
        method: The method's name as its source writes it (plus mode/k for picks).
        source: Where the numbers come from (file and what it covers).
        metric: "recall" (cells keyed recall@k) or "success" (one cell, success_rate).
        cells: protocol -> column ("recall@1", "recall@10", "recall@50" or "success_rate") -> Cell, or None
            where the source did not compute it.
        counts: protocol -> n targets (recall) or n examples (success), None when unknown.
    """

    group: str
    method: str
    source: str
    metric: str
    cells: dict[str, dict[str, Cell | None]]
    counts: dict[str, int | None] = field(default_factory=dict)


@dataclass
class Inputs:
    """What was found for one dataset (None: missing) and the notes on what was skipped."""

    dataset: str
    run_dir: Path
    metrics: dict[str, Any] | None
    ablation: dict[str, Any] | None
    item_expert: dict[str, Any] | None
    paths: dict[str, Path]
    notes: list[str] = field(default_factory=list)
    evaluated: str = ""
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)


# --- Inputs ---------------------------------------------------------------------------------------------------------


def parse_runs(specs: list[str]) -> dict[str, Path]:
    """`name=run_dir` pairs -> {name: Path}, in the order given.

    Raises:
        ConfigError: a pair without "=", an empty name or path, or a name given twice.
    """
    runs: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = (part.strip() for part in spec.partition("="))
        if not sep or not name or not path:
            raise ConfigError(f"--runs takes name=run_dir pairs, got {spec!r}; e.g. --runs redial=runs/redial")
        if name in runs:
            raise ConfigError(f"--runs names {name!r} twice; give each dataset once")
        runs[name] = Path(path)
    if not runs:
        raise ConfigError("--runs is empty; give at least one name=run_dir pair")
    return runs


def parse_variant_runs(specs: list[str], datasets: list[str]) -> dict[str, dict[str, Path]]:
    """`name:label=run_dir` triples -> {name: {label: Path}}.

    Raises:
        ConfigError: a malformed triple, a dataset not in --runs, or a label given twice for one dataset.
    """
    out: dict[str, dict[str, Path]] = {}
    for spec in specs:
        key, sep, path = (part.strip() for part in spec.rpartition("="))  # a label may hold "=" ("k = 10")
        name, colon, label = (part.strip() for part in key.partition(":"))
        if not sep or not colon or not name or not label or not path:
            raise ConfigError(
                f"--variant-runs takes name:label=run_dir, got {spec!r}; e.g. redial:random=runs/redial-random"
            )
        if name not in datasets:
            raise ConfigError(f"--variant-runs names dataset {name!r}, which --runs lacks ({datasets})")
        if label in out.setdefault(name, {}):
            raise ConfigError(f"--variant-runs gives {name}:{label} twice")
        out[name][label] = Path(path)
    return out


def _read_json(path: Path, what: str, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        notes.append(f"{what}: `{path}` not found, skipped")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        notes.append(f"{what}: `{path}` is not valid JSON ({e}), skipped")
        return None
    if not isinstance(data, dict):
        notes.append(f"{what}: `{path}` holds a {type(data).__name__}, not an object, skipped")
        return None
    return data


def read_inputs(dataset: str, run_dir: Path, ablation_dir: Path | None, split: str) -> Inputs:
    """Read a dataset's metrics.json and (when present) its ablation and item_expert JSONs, noting what is missing.

    A benchmark JSON made for another split than `split` is skipped with a note.
    """
    notes: list[str] = []
    paths = {"metrics": run_dir / "evaluate" / "metrics.json"}
    metrics = _read_json(paths["metrics"], "evaluate metrics (run `reges evaluate`)", notes)
    evaluated = ""
    manifest = run_dir / "evaluate" / "manifest.json"
    if metrics is not None and manifest.is_file():
        evaluated = str(json.loads(manifest.read_text(encoding="utf-8")).get("finished", ""))
    ablation = item_expert = None
    if ablation_dir is None:
        notes.append("retrieval ablation and item expert benchmark: no --ablation-dir given, skipped")
    else:
        paths["ablation"] = ablation_dir / f"retrieval_ablation_{dataset}.json"
        paths["item_expert"] = ablation_dir / f"item_expert_{dataset}.json"
        ablation = _read_json(paths["ablation"], "retrieval ablation (benchmarks/retrieval_ablation.py)", notes)
        if ablation is not None and ablation.get("split") != split:
            notes.append(f"retrieval ablation: `{paths['ablation']}` is for split {ablation.get('split')!r}, "
                         f"not {split!r}, skipped")
            ablation = None
        item_expert = _read_json(paths["item_expert"], "item expert benchmark (benchmarks/item_expert.py)", notes)
        ie_split = (item_expert or {}).get("setup", {}).get("split")
        if item_expert is not None and ie_split != split:
            notes.append(f"item expert benchmark: `{paths['item_expert']}` is for split {ie_split!r}, not "
                         f"{split!r}, skipped")
            item_expert = None
    return Inputs(dataset, run_dir, metrics, ablation, item_expert, paths, notes, evaluated)


# --- Rows -----------------------------------------------------------------------------------------------------------


def _cell(summary: Any) -> Cell | None:
    """A metrics.json/ablation summary entry ({mean, ci_low, ci_high}) or a bare mean -> Cell."""
    if isinstance(summary, dict) and "mean" in summary:
        return Cell(float(summary["mean"]), summary.get("ci_low"), summary.get("ci_high"))
    if isinstance(summary, int | float) and not isinstance(summary, bool):
        return Cell(float(summary))
    return None


def recall_row(group: str, method: str, source: str, by_protocol: dict[str, Any]) -> Row:
    """A recall row from {protocol: {recall@k: {mean, ci_low, ci_high}, n_targets}}; missing cutoffs -> None."""
    cells: dict[str, dict[str, Cell | None]] = {}
    counts: dict[str, int | None] = {}
    for protocol in PROTOCOLS:
        summary = by_protocol.get(protocol) or {}
        cells[protocol] = {f"recall@{k}": _cell(summary.get(f"recall@{k}")) for k in CUTOFFS}
        counts[protocol] = summary.get("n_targets")
    return Row(group, method, source, "recall", cells, counts)


def note_missing_cutoffs(rows: list[Row], source: str, notes: list[str]) -> None:
    """One note per source naming the report's cutoffs that its rows lack (shown as "-" in the table)."""
    missing: dict[str, list[str]] = {}
    for row in rows:
        for key in dict.fromkeys(k for p in PROTOCOLS for k, c in row.cells[p].items() if c is None):
            missing.setdefault(key, []).append(row.method)
    for key, methods in missing.items():
        notes.append(f"{source}: {key} not computed for {', '.join(methods)} (not among its cutoffs), shown as -")


def success_row(group: str, method: str, source: str, by_protocol: dict[str, Any]) -> Row:
    """A pick row from {protocol: {success_rate: {mean, ci_low, ci_high} or a mean, n_examples}}."""
    cells = {p: {"success_rate": _cell((by_protocol.get(p) or {}).get("success_rate"))} for p in PROTOCOLS}
    counts = {p: (by_protocol.get(p) or {}).get("n_examples") for p in PROTOCOLS}
    return Row(group, method, source, "success", cells, counts)


def metrics_rows(metrics: dict[str, Any], split: str, notes: list[str]) -> tuple[list[Row], list[Row], list[Row]]:
    """Baseline rows, the shipped retrieve row and the end-to-end pick rows of one metrics.json."""
    baselines: list[Row] = []
    shipped: list[Row] = []
    picks: list[Row] = []
    by_method = metrics.get("splits", {}).get(split)
    if by_method is None:
        notes.append(f"metrics.json has no split {split!r} (it has {sorted(metrics.get('splits', {}))}); "
                     "baselines and the retrieve stage skipped")
    else:
        source = "metrics.json"
        for method in BASELINES:
            if method in by_method:
                baselines.append(recall_row("baseline", method, source, by_method[method]))
            else:
                notes.append(f"baseline {method}: not in metrics.json (not in evaluate.baselines), skipped")
        if SHIPPED in by_method:
            shipped.append(recall_row("shipped", SHIPPED, source, by_method[SHIPPED]))
        else:
            notes.append("shipped retrieve stage: not in metrics.json (retrieve/ was not complete at evaluate), "
                         "skipped")
        note_missing_cutoffs(baselines + shipped, "metrics.json", notes)
    e2e = metrics.get("end_to_end", {}).get(split)
    if e2e is None:
        notes.append(f"end-to-end pick: metrics.json has no end_to_end.{split} (generate/ was not complete when "
                     "evaluate ran), skipped")
    else:
        tuned = "tuned" if e2e.get("use_adapter") else "untuned"
        for method, by_protocol in e2e.get("methods", {}).items():
            fused = method in ("item_expert", "item_expert_unmentioned") and e2e.get("fusion_alpha") is not None
            alpha = f", alpha {e2e['fusion_alpha']:.2f}" if fused else ""
            label = (f"{method} (k={e2e.get('top_k')})" if method.startswith("retriever_top1")
                     else f"{method} ({tuned}, {e2e.get('mode')}, k={e2e.get('top_k')}{alpha})")
            picks.append(success_row("pick", label, "metrics.json end_to_end", by_protocol))
    return baselines, shipped, picks


def ablation_rows(ablation: dict[str, Any], notes: list[str]) -> list[Row]:
    """The ablation JSON's methods, in the ablation's order (known names first, then any others)."""
    results = ablation.get("results", {})
    source = f"retrieval_ablation ({ablation.get('examples', '?')} ex.)"
    order = [m for m in ABLATION_METHODS if m in results] + [m for m in results if m not in ABLATION_METHODS]
    absent = [m for m in ABLATION_METHODS if m not in results]
    if absent:
        notes.append(f"ablation rows {', '.join(absent)}: not in the ablation JSON (their inputs, e.g. rewrite/ or "
                     "distill/ queries of the split, were missing when it ran), skipped")
    rows = [recall_row("ablation", m, source, results[m]) for m in order]
    note_missing_cutoffs(rows, "ablation JSON", notes)
    return rows


def item_expert_rows(item_expert: dict[str, Any]) -> list[Row]:
    """Retriever top-1 per k and one row per (variant, mode, k) of the item_expert JSON (means only)."""
    setup = item_expert.get("setup", {})
    rows: list[Row] = []
    for k, by_protocol in sorted(item_expert.get("retriever_top1", {}).items(), key=lambda kv: int(kv[0])):
        rows.append(success_row("pick", f"retriever_top1 (k={k})", "item_expert.py, means only", by_protocol))
    for run in item_expert.get("runs", []):
        label = f"item_expert ({run['variant']}, {run['mode']}, k={run['top_k']})"
        rows.append(success_row("pick", label, f"item_expert.py ({run.get('examples', '?')} ex.), means only",
                                run["metrics"]))
    if rows and setup:
        rows[0].source += f", {setup.get('model', '?')}"
    return rows


def build_rows(inputs: Inputs, split: str) -> list[Row]:
    """All rows of one dataset, in table order: baselines, ablation, shipped, picks. Notes go to `inputs.notes`."""
    baselines: list[Row] = []
    shipped: list[Row] = []
    picks: list[Row] = []
    if inputs.metrics is not None:
        baselines, shipped, picks = metrics_rows(inputs.metrics, split, inputs.notes)
    ablation = ablation_rows(inputs.ablation, inputs.notes) if inputs.ablation is not None else []
    for label, metrics in inputs.variants.items():
        for row in metrics_rows(metrics, split, [])[2]:
            if not row.method.startswith("retriever_top1"):  # the same candidates: its top-1 is already shown
                row.method = row.method.replace(" (", f" [{label}] (", 1)
                row.source += f" of the {label} run"
                picks.append(row)
    if inputs.item_expert is not None:
        picks += item_expert_rows(inputs.item_expert)
    return baselines + ablation + shipped + picks


# --- Markdown -------------------------------------------------------------------------------------------------------


def table_lines(rows: list[Row]) -> list[str]:
    """The markdown table: one line per row, R@1/R@10/R@50 (pick rows: success in the R@1 columns) per protocol."""
    header = ["group", "method", "source"]
    for protocol in PROTOCOLS:
        header += [f"{protocol} R@1 / success", f"{protocol} R@10", f"{protocol} R@50"]
    header.append("n (all / novel)")
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * (3 * len(PROTOCOLS)) + "---:|"]
    for row in rows:
        cells = [row.group, f"`{row.method}`", row.source]
        for protocol in PROTOCOLS:
            if row.metric == "success":
                values = [row.cells[protocol].get("success_rate"), None, None]
                rendered = [values[0].render() if values[0] is not None else "-", "", ""]
            else:
                values = [row.cells[protocol].get(f"recall@{k}") for k in CUTOFFS]
                rendered = [v.render() if v is not None else "-" for v in values]
            cells += rendered
        counts = [row.counts.get(p) for p in PROTOCOLS]
        cells.append(" / ".join("?" if c is None else str(c) for c in counts))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def dataset_section(inputs: Inputs, rows: list[Row], split: str, plots: dict[str, Path | None]) -> list[str]:
    """The markdown of one dataset: sources, table, plots and the notes on what was skipped."""
    lines = [f"## {inputs.dataset} ({split})", ""]
    sources = [f"`{path}`" for key, path in inputs.paths.items() if (
        (key == "metrics" and inputs.metrics is not None) or (key == "ablation" and inputs.ablation is not None)
        or (key == "item_expert" and inputs.item_expert is not None))]
    lines.append(f"Run dir `{inputs.run_dir}`; read: {', '.join(sources) or 'nothing'}"
                 + (f"; evaluate finished {inputs.evaluated}." if inputs.evaluated else "."))
    if inputs.metrics is not None:
        m = inputs.metrics
        lines.append(f"metrics.json: catalog of {m.get('catalog_size', '?')} items, cutoffs {m.get('cutoffs')}, "
                     f"{m.get('bootstrap', '?')} bootstrap resamples (95% CI over dialogues), primary metric "
                     f"{m.get('primary_metric', '?')}.")
    if inputs.item_expert is not None:
        s = inputs.item_expert.get("setup", {})
        lines.append(f"item_expert.py: {s.get('max_examples') or 'all'} examples (seeded slice), model "
                     f"{s.get('model', '?')}, {s.get('date', '?')} on {s.get('machine', '?')}; its slices are small, "
                     "so it reports means only (no CI).")
    lines.append("")
    if rows:
        lines += table_lines(rows)
    else:
        lines.append("No numbers for this dataset: every input was missing (see the notes).")
    lines.append("")
    for name, path in plots.items():
        if path is not None:
            lines += [f"![{name}]({path.name})", ""]
    if inputs.notes:
        lines += ["Skipped or incomplete inputs:", ""] + [f"- {n}" for n in inputs.notes] + [""]
    return lines


def legend_lines() -> list[str]:
    return (
        ["## Methods", ""]
        + [f"- `{m}`: {d}" for m, d in DESCRIPTIONS.items()]
        + ["", "Recall@k: share of (example, target) pairs whose target is in the top k of the FULL catalog; "
           "protocol *novel* counts only targets not mentioned earlier in the dialogue. Success: the single pick is "
           "a target. Brackets: 95% clustered-bootstrap CI over dialogues; none where the source gives none. "
           "*n*: targets (recall rows) or examples (pick rows) per protocol.", ""]
    )


# --- Plots ----------------------------------------------------------------------------------------------------------


def recall_curves(inputs: Inputs, split: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """label -> protocol -> [(k, mean recall@k)] for every retrieval method with numbers (metrics.json, ablation)."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    sources: list[tuple[str, dict[str, Any]]] = []
    if inputs.metrics is not None:
        sources.append(("", inputs.metrics.get("splits", {}).get(split) or {}))
    if inputs.ablation is not None:
        sources.append(("ablation: ", inputs.ablation.get("results", {})))
    for prefix, by_method in sources:
        for method, by_protocol in by_method.items():
            curve = {}
            for protocol in PROTOCOLS:
                points = []
                for key, value in (by_protocol.get(protocol) or {}).items():
                    if key.startswith("recall@") and isinstance(value, dict) and "mean" in value:
                        points.append((int(key.split("@")[1]), float(value["mean"])))
                curve[protocol] = sorted(points)
            if any(curve.values()):
                curves[prefix + method] = curve
    return curves


def success_curves(item_expert: dict[str, Any]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """label -> protocol -> [(k, success rate)]: the retriever's top-1 and each (variant, mode) of item_expert.py."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for k, by_protocol in item_expert.get("retriever_top1", {}).items():
        for protocol in PROTOCOLS:
            value = (by_protocol.get(protocol) or {}).get("success_rate")
            if isinstance(value, int | float):
                curves.setdefault("retriever top-1", {p: [] for p in PROTOCOLS})[protocol].append((int(k), value))
    for run in item_expert.get("runs", []):
        label = f"{run['variant']} {run['mode']}"
        for protocol in PROTOCOLS:
            value = (run["metrics"].get(protocol) or {}).get("success_rate")
            if isinstance(value, int | float):
                curves.setdefault(label, {p: [] for p in PROTOCOLS})[protocol].append((int(run["top_k"]), value))
    return {label: {p: sorted(points) for p, points in c.items()} for label, c in curves.items()}


def plot_curves(
    curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path, title: str, xlabel: str, ylabel: str
) -> Path:
    """Two panels (protocol all, novel), one line per label, written as a PNG to `path` (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PROTOCOLS), figsize=(12, 4.8), sharey=True)
    cmap = plt.get_cmap("tab20")
    colors = [cmap(i) for i in range(0, 20, 2)] + [cmap(i) for i in range(1, 20, 2)]  # dark shades first
    markers = "osD^vPX*<>"
    ks = sorted({k for c in curves.values() for p in PROTOCOLS for k, _ in c.get(p, [])})
    for ax, protocol in zip(axes, PROTOCOLS, strict=True):
        for i, (label, curve) in enumerate(curves.items()):
            points = curve.get(protocol, [])
            if not points:
                continue
            # references dashed (ablation parts, the retriever's own top-1); the shipped stage drawn thicker
            style = "--" if label.startswith("ablation: ") or label == "retriever top-1" else "-"
            ax.plot([k for k, _ in points], [v for _, v in points], style, marker=markers[i % len(markers)],
                    markersize=4, linewidth=2.5 if label == SHIPPED else 1.3, color=colors[i % len(colors)],
                    label=label)
        ax.set_ylim(-0.02, 1.02)  # rates: the same scale on every plot
        if len(ks) > 1 and ks[0] > 0 and ks[-1] / ks[0] >= 10:
            ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_title(f"protocol {protocol}")
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def dataset_plots(inputs: Inputs, split: str, out_dir: Path) -> dict[str, Path | None]:
    """Write the dataset's two plots where they have data; a missing one gets a note."""
    plots: dict[str, Path | None] = {}
    curves = recall_curves(inputs, split)
    if curves:
        plots["recall@k"] = plot_curves(curves, out_dir / f"recall_at_k_{inputs.dataset}.png",
                                        f"{inputs.dataset} / {split}: Recall@k over the full catalog", "k", "recall@k")
    else:
        plots["recall@k"] = None
        inputs.notes.append("recall@k plot: no recall numbers, not drawn")
    success = success_curves(inputs.item_expert) if inputs.item_expert is not None else {}
    if success:
        plots["success vs k"] = plot_curves(success, out_dir / f"success_vs_k_{inputs.dataset}.png",
                                            f"{inputs.dataset} / {split}: pick success vs candidates k",
                                            "k (candidates shown to the Item Expert)", "success rate")
    else:
        plots["success vs k"] = None
        inputs.notes.append("success-vs-k plot: no item_expert JSON with success rates, not drawn")
    return plots


# --- Report ---------------------------------------------------------------------------------------------------------


def build_report(
    runs: dict[str, Path],
    ablation_dir: Path | None,
    out: Path,
    split: str,
    command: str,
    variant_runs: dict[str, dict[str, Path]] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Read every dataset's inputs, draw the plots next to `out`, and return the markdown and the JSON payload."""
    machine = machine_info()
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lines = [
        "# End-to-end results",
        "",
        f"Built {date} on {machine['cpu_model']} ({machine['cores']} logical cores, {machine['platform']}) from "
        "the files below; each number was measured when its source file was written (dates per section). "
        "Missing inputs are skipped and listed under each table; nothing is filled in. This page is generated whole "
        "by the command below: edit the generator, not the page (analysis belongs on a hand-written page).",
        "",
        f"```\n{command}\n```",
        "",
    ]
    payload: dict[str, Any] = {"date": date, "command": command, "machine": machine, "split": split, "datasets": {}}
    for dataset, run_dir in runs.items():
        inputs = read_inputs(dataset, run_dir, ablation_dir, split)
        for label, variant_dir in (variant_runs or {}).get(dataset, {}).items():
            path = variant_dir / "evaluate" / "metrics.json"
            inputs.paths[f"variant {label}"] = path
            metrics = _read_json(path, f"{label} run's evaluate metrics", inputs.notes)
            if metrics is not None:
                inputs.variants[label] = metrics
        rows = build_rows(inputs, split)
        plots = dataset_plots(inputs, split, out.parent)
        lines += dataset_section(inputs, rows, split, plots)
        payload["datasets"][dataset] = {
            "run_dir": str(run_dir),
            "inputs": {k: str(p) for k, p in inputs.paths.items()},
            "rows": [dataclasses.asdict(r) for r in rows],
            "plots": {k: (str(p) if p is not None else None) for k, p in plots.items()},
            "notes": inputs.notes,
        }
        logger.info("%s: %d rows, %d notes", dataset, len(rows), len(inputs.notes))
    lines += legend_lines()
    return "\n".join(lines), payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, metavar="NAME=RUN_DIR",
                        help="datasets and their run dirs, e.g. redial=runs/redial inspired=runs/inspired")
    parser.add_argument("--ablation-dir", type=Path, default=Path("docs/results"),
                        help="folder with retrieval_ablation_<name>.json and item_expert_<name>.json")
    parser.add_argument("--variant-runs", nargs="*", default=[], metavar="NAME:LABEL=RUN_DIR",
                        help="more runs of a dataset whose pick rows join its table, e.g. redial:random=runs/r-random")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--out", type=Path, required=True, help="markdown report; plots and .json go next to it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        runs = parse_runs(args.runs)
        variant_runs = parse_variant_runs(args.variant_runs, list(runs))
    except ConfigError as e:
        parser.error(str(e))
    command = shlex.join([".venv/bin/python", "benchmarks/end_to_end_report.py",
                          *(argv if argv is not None else sys.argv[1:])])
    markdown, payload = build_report(runs, args.ablation_dir, args.out, args.split, command, variant_runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s, %s and the plots next to them", args.out, args.out.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
