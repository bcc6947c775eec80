"""The layout rules of the code base: sfport's modules import each other at module level only (so the import graph
is visible and a cycle cannot hide inside a function), and that graph has no cycle. The two exceptions import
lazily for start-up time, not to dodge a cycle: ``sfport/__init__.py`` and the command line load the torch-based
parts on first use, so reading Caffe files needs no torch."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = {"sfport": ROOT / "sfport", "sfport.converters": ROOT / "converters", "sfport.proto": ROOT / "protos"}
LAZY_ALLOWED = {"sfport", "sfport.cli"}  # and the command modules under sfport.commands


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.glob("*.py"):
            if f.is_symlink():
                continue
            out[pkg if f.name == "__init__.py" else f"{pkg}.{f.stem}"] = f
    for f in (ROOT / "sfport").iterdir():  # subpackages of sfport (e.g. sfport/solver/)
        if f.is_dir() and (f / "__init__.py").exists():
            for g in f.glob("*.py"):
                base = f"sfport.{f.name}"
                out[base if g.name == "__init__.py" else f"{base}.{g.stem}"] = g
    return out


def _targets(node, module: str, is_pkg: bool, known: set) -> list[str]:
    """The sfport modules an import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if node.level:
        parts = module.split(".")
        base = ".".join(parts[:len(parts) - node.level + (1 if is_pkg else 0)])
        name = f"{base}.{node.module}" if node.module else base
    else:
        name = node.module or ""
    if not name.startswith("sfport"):
        return []
    subs = [f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in known]
    return subs or ([name] if name in known else [])


def _imports():
    mods = _modules()
    known = set(mods)
    top, lazy = {}, {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        is_pkg = path.name == "__init__.py"
        top[name] = {t for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                     for t in _targets(node, name, is_pkg, known)} - {name}
        lazy[name] = sorted({t for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                             for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))
                             for t in _targets(node, name, is_pkg, known)})
    return top, lazy


def test_no_function_level_imports_of_sfport_modules():
    _, lazy = _imports()
    offenders = {m: t for m, t in lazy.items() if t and m not in LAZY_ALLOWED and not m.startswith("sfport.commands.")}
    assert not offenders, offenders


def test_the_module_import_graph_has_no_cycle():
    top, _ = _imports()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for t in sorted(top.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(top):
        if m not in state:
            visit(m)
    assert len(top) > 20  # the walk saw the library


def test_the_cycle_check_can_fail(tmp_path, monkeypatch):
    """The checker finds a cycle where there is one (two modules importing each other)."""
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "a.py").write_text("from sfport.b import x\n")
    (tmp_path / "b.py").write_text("import sfport.a\nx = 1\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGES", {"sfport": tmp_path})
    try:
        test_the_module_import_graph_has_no_cycle()
    except AssertionError as e:
        assert "sfport.a -> sfport.b -> sfport.a" in str(e)
    else:
        raise AssertionError("no cycle found")
