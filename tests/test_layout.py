"""The layout rules of the code base: sfport's modules import each other at module level only (so the import graph
is visible and a cycle cannot hide inside a function), and that graph has no cycle. The two exceptions import
lazily for start-up time, not to dodge a cycle: ``sfport/__init__.py`` and the command line load the torch-based
parts on first use, so reading Caffe files needs no torch. ARCHITECTURE.md has a row for every module and command,
no module is much over 600 lines, only the command line imports the face application, and layer types' names are
written in their homes only."""
import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = {"sfport": ROOT / "sfport", "sfport.converters": ROOT / "converters", "sfport.protos": ROOT / "protos"}
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


# --- the map (ARCHITECTURE.md), the rooms' rules, one home per layer type ---

ARCHITECTURE = ROOT / "ARCHITECTURE.md"
# the modules that own layer types: where a layer type's name may be written as a string
TYPE_HOMES = ("converters/", "sfport/netdef/datalayers.py", "sfport/formats/upgrade.py", "sfport/netdef/draw.py",
              "sfport/netdef/builtin.py")
MAX_LINES = 650   # "about 600"


def _files() -> dict[str, pathlib.Path]:
    """Every module of the package, by its path in the checkout."""
    return {str(p.relative_to(ROOT)): p for folder in ("sfport", "converters", "protos")
            for p in sorted((ROOT / folder).rglob("*.py")) if "__pycache__" not in p.parts}


def _rows(heading: str) -> list[str]:
    """The first column of the table under ``heading`` in ARCHITECTURE.md, without the backquotes."""
    text = ARCHITECTURE.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [line.split("|")[1].strip().strip("`") for line in text.splitlines()
            if line.startswith("| `")]


def test_architecture_has_a_row_for_every_module():
    listed = set(_rows("Modules"))
    missing = sorted(set(_files()) - listed)
    assert not missing, f"modules without a row in ARCHITECTURE.md: {missing}"
    gone = sorted(m for m in listed if not (ROOT / m).exists())
    assert not gone, f"ARCHITECTURE.md lists modules that do not exist: {gone}"


def test_architecture_maps_every_command_to_its_module():
    from sfport.cli import cli
    rows = {r.split()[1]: r for r in _rows("Commands")}
    assert set(rows) == set(cli.commands), (sorted(rows), sorted(cli.commands))
    text = ARCHITECTURE.read_text().split("## Commands\n", 1)[1].split("\n## ", 1)[0]
    for name, command in cli.commands.items():
        module = sys.modules[command.callback.__module__].__file__
        row = next(line for line in text.splitlines() if line.startswith(f"| `sfport {name}`"))
        assert f"`{pathlib.Path(module).relative_to(ROOT)}`" in row.split("|")[2], (name, module, row)


def test_no_module_is_much_over_600_lines():
    long = {m: n for m, p in _files().items() if (n := len(p.read_text().splitlines())) > MAX_LINES
            and m != "protos/caffe_pb2.py"}   # generated
    assert not long, long


def test_only_the_command_line_imports_the_face_application():
    top, lazy = _imports()
    face = {m for m in top if m.startswith("sfport.face")}
    assert face, "no face modules seen"
    importers = {m: sorted((top[m] | set(lazy[m])) & face) for m in top
                 if not m.startswith(("sfport.face", "sfport.commands")) and m != "sfport.cli"}
    assert not {m: f for m, f in importers.items() if f}, importers


def _type_strings(source: str) -> list[tuple[int, str]]:
    """(line, value) of every string constant in ``source`` that is a layer type's name (docstrings aside)."""
    from sfport import converters
    from sfport.netdef import datalayers
    types = set(converters.registered_types()) | set(datalayers.DATA_TYPES)
    tree = ast.parse(source)
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in types
            and id(node) not in docs]


def test_layer_type_names_live_in_their_homes():
    """No module outside the converters, the data-layer specification, the legacy-upgrade tables, the port of
    draw.py and the built-in nets writes a layer type's name as a string: it asks the converter of the type (its
    roles and hooks) or the data-layer specification instead."""
    found = {m: hits for m, p in _files().items() if not m.startswith(TYPE_HOMES)
             and m != "protos/caffe_pb2.py" and (hits := _type_strings(p.read_text()))}
    assert not found, found


def test_the_type_name_check_can_fail():
    hits = _type_strings('"""Convolution in a docstring is prose."""\nx = layer.type == "Convolution"\n'
                         'y = f"a {z} Pooling"\n')
    assert hits == [(2, "Convolution")]
