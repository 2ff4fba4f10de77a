"""The architecture as tests: no module outside pipeline/tasks/ asks which task it runs, and pipeline/ has no import
cycle, lazy imports included. (`lint-imports`, run by `make lint`, holds the layer order itself: pyproject.toml.)"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
TASK_NAMES = {"classification", "detection", "sequence", "segmentation"}


def task_branches(source: str) -> list[tuple[int, str]]:
    """(line, code) of every comparison with a task name, or of `<x>.task` (cfg.task == ..., match cfg.task:)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Match) and isinstance(node.subject, ast.Attribute) and node.subject.attr == "task":
            found.append((node.lineno, ast.unparse(node.subject)))
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        names = [e for o in operands for e in (o.elts if isinstance(o, ast.Tuple | ast.List | ast.Set) else [o])]
        named = any(isinstance(e, ast.Constant) and e.value in TASK_NAMES for e in names)
        asks = any(isinstance(o, ast.Attribute) and o.attr == "task" for o in operands) and \
            any(isinstance(op, ast.Eq | ast.NotEq | ast.Is | ast.IsNot) for op in node.ops)
        if named or asks:
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_module_outside_tasks_branches_on_the_task():
    """What differs by task is a Task member (pipeline/engine/task.py): strata, describe_targets,
    learns_soft_targets, has_gpu_augment, bare_batches ...; a branch elsewhere is a task's code in the wrong place."""
    branches = [f"{path.relative_to(PACKAGE.parent)}:{line}: {code}"
                for path in sorted(PACKAGE.rglob("*.py")) if "tasks" not in path.relative_to(PACKAGE).parts
                for line, code in task_branches(path.read_text())]
    assert not branches, "task branches outside pipeline/tasks/ (make them Task members):\n" + "\n".join(branches)


def test_the_branch_finder_finds_what_it_must():
    """The check above can fail: each of these is a task branch, and the registry lookup is not."""
    planted = ['if cfg.task == "detection": pass', 'x = 1 if task.cfg.task != "sequence" else 2',
               'if name in ("classification", "sequence"): pass', 'if "segmentation" == t: pass',
               "match cfg.task:\n    case _: pass", "if cfg.task is other: pass"]
    for code in planted:
        assert task_branches(code), code
    assert not task_branches("if cfg.task not in TASKS: pass\nbuild = TASKS[cfg.task]")


def module_imports() -> dict[str, set[str]]:
    """Every pipeline module and the pipeline modules it imports, anywhere in the file (lazy imports too)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        resolved = set()
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                resolved.add(target)
        graph[name] = resolved
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_pipeline_has_no_import_cycle_counting_lazy_imports():
    graph = module_imports()
    assert len(graph) > 60 and graph["pipeline.stages.train"]  # it read the package
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the finder finds one
    assert cycles(graph) == []
