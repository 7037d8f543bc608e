"""The package's shape: no import cycles, and every run file holds rows of one schema."""

from __future__ import annotations

import ast
import os
import pathlib

from jaxgan import configs, evaluate, loop, rundir

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxgan"


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """``module -> the jaxgan modules it imports`` (at any depth of the file: an import inside a
    function is still a dependency), read from the source with ast."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                # `from pkg import sub` depends on the submodule (the package is already importing);
                # `from mod import name` on the module.
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                targets = subs if subs else [base]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of imports (as a list that starts and ends with the same module), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def test_no_import_cycles_in_jaxgan():
    graph = import_graph()
    assert "jaxgan.loop" in graph and "jaxgan.observers" in graph["jaxgan.loop"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # Nothing below the loop imports it (data flows one way: loop -> chunk -> steps).
    assert not [m for m, deps in graph.items() if "jaxgan.loop" in deps and m not in ("jaxgan.cli", "jaxgan")]


def test_every_run_file_holds_rows_of_one_schema(tmp_path):
    """metrics.jsonl (training rows), quality.jsonl (toy sample quality) and eval.jsonl
    (evaluation) each hold one set of keys on every row, and the stop-on-NaN row too."""
    config = configs.apply_overrides(configs.preset("ring8"), {
        "batch_size": 32, "g_hidden": (8,), "d_hidden": (8,), "latent_dim": 4, "steps": 60, "log_every": 20,
        "ckpt_every": 30, "plot_every": 30, "eval.every": 20, "eval.samples": 50, "tensorboard": False})
    out = str(tmp_path / "run")
    loop.train(config, out, progress=False, echo=lambda _m: None)
    for name, stream_keys in ((rundir.METRICS, {"generator_score", "d_loss", "generator_score_swing"}),
                              (rundir.QUALITY, {"modes_captured", "high_quality_frac"}),
                              (evaluate.EVAL_LOG, {"fd_data", "modes"})):
        rows = rundir.read_jsonl(os.path.join(out, name))
        assert len(rows) >= 3, name
        schemas = {frozenset(r) for r in rows}
        assert len(schemas) == 1, (name, schemas)
        assert stream_keys <= set(rows[0]), name
    metric_keys = set(rundir.read_jsonl(os.path.join(out, rundir.METRICS))[0])
    assert not metric_keys & {"modes_captured", "fd_data"}  # other streams stay in their own files
    # A run stopped on a non-finite update logs the failing round with the same keys.
    bad = str(tmp_path / "bad")
    blow_up = configs.apply_overrides(config, {"g_lr": 1e5, "d_lr": 1e5, "loss": "wasserstein", "activation": "relu",
                                               "log_every": 1, "eval.every": 0, "ckpt_every": 1})
    try:
        loop.train(blow_up, bad, progress=False, echo=lambda _m: None)
    except loop.NonFiniteError:
        pass
    rows = rundir.read_jsonl(os.path.join(bad, rundir.METRICS))
    assert len({frozenset(r) for r in rows}) == 1 and len(rows) >= 2
