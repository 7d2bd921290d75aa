"""The structure rules of clrp/ (issue 20): no import cycles between its modules, no writes to
``globals()``, the scene worlds as one package, no file over 600 lines. Read from the source
with ``ast``; nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "clrp"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    """``{"clrp.engine.ops": path, "clrp.engine": path of its __init__.py, ...}``."""
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _module_level_imports(tree: ast.Module):
    """The import statements that run when the module is imported: at the top level and inside
    top-level ``if``/``try``/``with`` blocks and class bodies, not under ``if TYPE_CHECKING``."""
    def visit(body):
        for n in body:
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                yield n
            elif isinstance(n, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(n.test):
                    yield from visit(n.body)
                    yield from visit(n.orelse)
            elif isinstance(n, ast.Try):
                for block in (n.body, *(h.body for h in n.handlers), n.orelse, n.finalbody):
                    yield from visit(block)
            elif isinstance(n, (ast.With, ast.ClassDef)):
                yield from visit(n.body)

    yield from visit(tree.body)


def import_graph() -> dict[str, set[str]]:
    """``{module: the clrp modules it imports at module level}``. ``from pkg import name`` is an
    edge to ``pkg.name`` when that is a module, else to ``pkg``.

    Function-level imports are left out: they run when the function is called, after every module
    has loaded, so they cannot leave a module half-initialised at import time (what a cycle
    breaks); they are how clrp defers heavy or optional imports. With them the graph has cycles
    today (``scenes`` <-> ``scene_presets``, which the scenes package removes; the engine's trace
    cache calling back into ``trace``, ``plan`` and ``propagate``)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        deps = set()
        for n in _module_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(n, ast.Import):
                deps.update(a.name for a in n.names if a.name in mods)
                continue
            if n.level:
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(here[:len(here) - (n.level - 1)] + ([n.module] if n.module else []))
            else:
                base = n.module or ""
            for a in n.names:
                target = f"{base}.{a.name}"
                if target in mods:
                    deps.add(target)
                elif base in mods:
                    deps.add(base)
        deps.discard(name)
        graph[name] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle_and_accepts_a_chain():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_import_graph_reads_relative_and_absolute_imports():
    g = import_graph()
    assert "clrp.errors" in g["clrp.engine.graph"]          # from ..errors import InvalidTarget
    assert "clrp.evaluation.pointing" in g["clrp.evaluation.discriminativeness"]  # from .pointing import ...


def test_no_import_cycles_between_clrp_modules():
    cycles = find_cycles(import_graph())
    assert not cycles, "modules of clrp/ that import each other (module level): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def _globals_writes(tree: ast.AST) -> list[int]:
    """Lines that change the dict ``globals()`` returns, directly or through a name bound to it
    (``g = globals()``): ``.update(...)`` (or any other mutating method), ``[k] = v``, ``[k] += v``,
    ``del [k]``."""
    aliases = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and _is_globals_call(n.value)
               for t in n.targets if isinstance(t, ast.Name)}

    def is_globals(node):
        return _is_globals_call(node) or (isinstance(node, ast.Name) and node.id in aliases)

    mutating = {"update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__"}
    lines = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in mutating \
                and is_globals(n.func.value):
            lines.append(n.lineno)
        targets = n.targets if isinstance(n, (ast.Assign, ast.Delete)) else \
            [n.target] if isinstance(n, ast.AugAssign) else []
        lines += [t.lineno for t in targets if isinstance(t, ast.Subscript) and is_globals(t.value)]
    return sorted(lines)


def _is_globals_call(node) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "globals"


def test_globals_write_finder():
    code = ("globals().update(a=1)\nglobals()['b'] = 2\nglobals()['b'] += 1\ndel globals()['b']\n"
            "x = globals()['a']\ng = globals()\ny = g['a']\ng.update(a=2)\ng['c'] = 3\n")
    assert _globals_writes(ast.parse(code)) == [1, 2, 3, 4, 8, 9]


def test_no_globals_writes_in_clrp():
    found = [f"{p.relative_to(PKG.parent)}:{line}" for p in sorted(PKG.rglob("*.py"))
             for line in _globals_writes(ast.parse(p.read_text(encoding="utf-8")))]
    assert not found, "writes to globals() (pass configuration objects instead): " + ", ".join(found)


def test_scene_worlds_are_one_package():
    assert (PKG / "scenes").is_dir() and (PKG / "scenes" / "__init__.py").is_file(), \
        "clrp/scenes/ must be a package (a folder with __init__.py)"


def test_no_python_file_in_clrp_over_600_lines():
    long = {str(p.relative_to(PKG.parent)): n for p in sorted(PKG.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"files of clrp/ over {MAX_LINES} lines: " + ", ".join(f"{k} ({v})" for k, v in long.items())


# ---------------------------------------------------------------------------------------------
# The repository around the package: every script and every generated document has its line.

ROOT = PKG.parent


def test_every_script_has_a_line_in_the_scripts_readme():
    readme = (ROOT / "scripts" / "README.md").read_text(encoding="utf-8")
    scripts = [p for p in sorted((ROOT / "scripts").rglob("*")) if p.suffix in (".py", ".sh") and p.name != "__init__.py"]
    assert scripts
    missing = [str(p.relative_to(ROOT)) for p in scripts if f"`{p.name}`" not in readme]
    assert not missing, "scripts without a line in scripts/README.md: " + ", ".join(missing)


def test_every_file_of_docs_results_is_indexed():
    index = (ROOT / "docs" / "results" / "README.md").read_text(encoding="utf-8")
    files = [p for p in sorted((ROOT / "docs" / "results").iterdir()) if p.name != "README.md"]
    assert all(p.is_file() for p in files), "docs/results/ holds documents only (weights and logs: research/)"
    missing = [p.name for p in files if f"`{p.name}`" not in index]
    assert not missing, "files of docs/results/ missing from its README.md: " + ", ".join(missing)
    research = (ROOT / "research" / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in sorted((ROOT / "research").iterdir()) if p.is_dir() and f"`{p.name}/`" not in research]
    assert not missing, "folders of research/ missing from its README.md: " + ", ".join(missing)


def test_clrp_never_imports_streamlit_or_the_dashboard():
    """The core package is usable without the web front end: no import of ``streamlit`` or
    ``dashboard`` anywhere in clrp/, at any level (function-level imports count here)."""
    found = []
    for name, path in _modules().items():
        for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            roots = ([a.name for a in n.names] if isinstance(n, ast.Import)
                     else [n.module or ""] if isinstance(n, ast.ImportFrom) and not n.level else [])
            found += [f"{name}: {r}" for r in roots if r.split(".")[0] in ("streamlit", "dashboard")]
    assert not found, found
