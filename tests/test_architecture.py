"""Package dependencies go one way: no module imports a package above its layer, and no modules import each other.

The layers are drawn in docs/architecture.md. Every `import` is counted, at module level and inside functions
(a deferred import is still a dependency), including those under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top; a module may import its own layer and the layers below. Names are top-level modules or packages
# of `reges` ("reges" itself is the package's __init__).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("reges", "reges.records", "reges.errors", "reges.io", "reges.config", "reges.pipeline"),
    ("reges.titles", "reges.genres"),
    ("reges.data",),
    ("reges.catalog", "reges.linking"),
    ("reges.llm",),
    ("reges.retrieval",),
    ("reges.query_expert", "reges.item_expert"),
    ("reges.eval",),
    ("reges.recommender", "reges.shipped"),
    ("reges.server",),
    ("reges.cli",),
)

# Upward imports that are allowed for now, each with the reason; an entry whose import is gone fails the test, so
# the list cannot go stale.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def collect_modules(src: Path) -> dict[str, Path]:
    """Every module under `src/reges`, by dotted name."""
    return {module_name(p, src): p for p in sorted((src / "reges").rglob("*.py"))}


def imported_modules(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The `reges` modules `path` imports anywhere in its body (`from pkg import mod` counts as `pkg.mod`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules)
    return {m for m in found if m == "reges" or m.startswith("reges.")}


def layer_of(name: str) -> int:
    """The layer index of a module: that of the longest listed name it equals or sits under."""
    best, best_len = -1, -1
    for i, members in enumerate(LAYERS):
        for member in members:
            if (name == member or name.startswith(member + ".")) and len(member) > best_len:
                best, best_len = i, len(member)
    if best < 0:
        raise AssertionError(f"{name} is in no layer; add it to LAYERS here and to docs/architecture.md")
    return best


def import_graph(src: Path) -> dict[str, set[str]]:
    modules = collect_modules(src)
    return {name: imported_modules(path, name, modules) - {name} for name, path in modules.items()}


def upward_imports(src: Path) -> list[str]:
    """"a imports b" for every import of a higher layer that ALLOWED_UPWARD does not list."""
    bad = []
    for name, targets in sorted(import_graph(src).items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(name) and (name, target) not in ALLOWED_UPWARD:
                bad.append(f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})")
    return bad


def import_cycles(src: Path) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan's strongly connected parts)."""
    graph = import_graph(src)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_module_imports_a_higher_layer() -> None:
    bad = upward_imports(SRC)
    assert not bad, "imports against the layering of docs/architecture.md:\n" + "\n".join(bad)


def test_allowed_upward_imports_still_exist() -> None:
    graph = import_graph(SRC)
    stale = [f"{a} -> {b}" for a, b in ALLOWED_UPWARD if b not in graph.get(a, set())]
    assert not stale, f"remove these from ALLOWED_UPWARD, the import is gone: {stale}"


def test_no_import_cycles() -> None:
    cycles = import_cycles(SRC)
    assert not cycles, f"modules that import each other: {cycles}"


def test_every_module_has_a_layer() -> None:
    for name in collect_modules(SRC):
        layer_of(name)  # raises for a module outside every layer


def config_reads(path: Path) -> tuple[dict[str, set[str]], list[str]]:
    """What a module reads of the whole config, and whom it hands the whole config to.

    Every function parameter annotated `PipelineConfig` counts, whatever its name. Returns section -> the keys read
    as `cfg.section.key` ("" when the section is used whole, e.g. passed on), and the calls that get the whole
    config but are not functions of this module (their reads would escape this check).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    local = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    reads: dict[str, set[str]] = {}
    handed: list[str] = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        params = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
        names = {p.arg for p in params if p.annotation is not None and ast.unparse(p.annotation) == "PipelineConfig"}
        keyed: set[int] = set()
        for node in ast.walk(fn):
            inner = node.value if isinstance(node, ast.Attribute) else None
            if isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name) and inner.value.id in names:
                reads.setdefault(inner.attr, set()).add(node.attr)
                keyed.add(id(inner))
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names:
                if id(node) not in keyed:
                    reads.setdefault(node.attr, set()).add("")
            elif isinstance(node, ast.Call):
                args = list(node.args) + [k.value for k in node.keywords]
                if any(isinstance(a, ast.Name) and a.id in names for a in args):
                    if not (isinstance(node.func, ast.Name) and node.func.id in local):
                        handed.append(f"{ast.unparse(node.func)} (line {node.lineno})")
    return reads, handed


def test_stages_read_only_the_config_sections_they_declare() -> None:
    """A stage that read a section it does not declare would not go stale when that section changes.

    `reges.pipeline.stage_config` refuses such a read when the stage runs; this finds it without running, in the
    stage's module (which hands the whole config to no other module).
    """
    from reges.pipeline import PIPELINE

    bad: list[str] = []
    for stage in PIPELINE:
        path = SRC / (stage.module.replace(".", "/") + ".py")
        if not path.is_file():
            path = path.with_suffix("") / "__init__.py"
        whole = {"run"} | {s for s in stage.sections if "." not in s}
        if "item_llm" in whole:  # stage_config sets item_llm to the Item Expert's LLM; `llm` stays hidden
            whole.add("item_expert_llm")
        one_key = {tuple(s.split(".", 1)) for s in stage.sections if "." in s}
        reads, handed = config_reads(path)
        assert reads, f"{stage.module} reads no `cfg: PipelineConfig` parameter; annotate its run's cfg"
        bad += [
            f"stage {stage.name} ({stage.module}) reads cfg.{section}" + (f".{key}" if key else "")
            for section, keys in sorted(reads.items())
            for key in sorted(keys)
            if section not in whole and (section, key) not in one_key
        ]
        bad += [f"stage {stage.name} ({stage.module}) hands the whole config to {call}" for call in handed]
    assert not bad, (
        "declare the section in the stage's sections in reges.pipeline.PIPELINE (keys that cannot change its output "
        "go in VOLATILE_KEYS), or stop reading it; pass other modules the sections they read, not cfg:\n"
        + "\n".join(bad)
    )
