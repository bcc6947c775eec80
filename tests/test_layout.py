"""The layout rules of the code base: sfport's modules import each other at module level only (so the import graph
is visible and a cycle cannot hide inside a function), and that graph has no cycle. The exceptions import lazily
for start-up time, not to dodge a cycle: ``sfport/__init__.py`` and the command line load the torch-based parts on
first use, so reading Caffe files needs no torch; and a converter family (``converters/<family>.py``: shapes,
roles, hooks, read by inspect, upgrade and deploy) imports its torch side (``converters/modules/<family>.py``: the
modules it builds) inside the methods that need it (build, load, ...), and nothing else lazily. Those lazy edges
are part of the graph the cycle check walks, a family and its torch side counting as one node (the torch side
imports the family's setups and checks; the family imports the torch side when it builds): any other cycle through
them is found. The converter side, the net definition and the file formats import no torch at module level.
ARCHITECTURE.md has a row for every module and command, no module is much over 600 lines, only the command line
imports the face application, and layer types' names are written in their homes only."""
import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = {"sfport": ROOT / "sfport", "sfport.converters": ROOT / "converters",
            "sfport.converters.modules": ROOT / "converters" / "modules", "sfport.protos": ROOT / "protos"}
LAZY_ALLOWED = {"sfport", "sfport.cli"}  # and the command modules under sfport.commands
TORCH_SIDE = "sfport.converters.modules"  # what the converter side (sfport.converters.*) may import lazily


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


def _converter_side(module: str) -> bool:
    return module.startswith("sfport.converters") and not module.startswith(TORCH_SIDE)


def _torch_side_imports(module: str, targets) -> list[str]:
    """The lazy imports of ``module`` that are a converter's of its torch side."""
    return [t for t in targets if _converter_side(module) and t.startswith(TORCH_SIDE + ".")]


def test_no_function_level_imports_of_sfport_modules():
    _, lazy = _imports()
    offenders = {m: sorted(set(t) - set(_torch_side_imports(m, t))) for m, t in lazy.items()
                 if t and m not in LAZY_ALLOWED and not m.startswith("sfport.commands.")}
    offenders = {m: t for m, t in offenders.items() if t}
    assert not offenders, offenders


def _node(module: str, known) -> str:
    """A converter family's torch side counts as the family (one node of the import graph)."""
    family = "sfport.converters." + module[len(TORCH_SIDE) + 1:] if module.startswith(TORCH_SIDE + ".") else module
    return family if family in known else module


def test_the_module_import_graph_has_no_cycle():
    modules, lazy = _imports()
    top = {}
    for m, targets in modules.items():   # with the converters' lazy imports of their torch side
        edges = {_node(t, modules) for t in set(targets) | set(_torch_side_imports(m, lazy.get(m, ())))}
        top.setdefault(_node(m, modules), set()).update(edges - {_node(m, modules)})
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


def test_the_cycle_check_sees_the_torch_side(tmp_path, monkeypatch):
    """A cycle through a converter's lazy import of its torch side is found: family ``a`` builds with
    ``modules.b``, which imports family ``c``, which imports ``a``."""
    conv = tmp_path / "converters"
    mods = conv / "modules"
    mods.mkdir(parents=True)
    for folder in (conv, mods):
        (folder / "__init__.py").write_text("")
    (conv / "a.py").write_text("def build():\n    from .modules import b\n")
    (mods / "b.py").write_text("from ..c import x\n")
    (conv / "c.py").write_text("from . import a\nx = 1\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGES", {"sfport.converters": conv,
                                                           "sfport.converters.modules": mods})
    try:
        test_the_module_import_graph_has_no_cycle()
    except AssertionError as e:
        assert "sfport.converters.a -> sfport.converters.modules.b -> sfport.converters.c -> sfport.converters.a" \
            in str(e), str(e)
    else:
        raise AssertionError("no cycle found")


# the rooms whose modules import no torch when imported: the converter side, the net definition, the file formats
TORCH_FREE = ("converters/", "sfport/netdef/", "sfport/formats/", "protos/")


def _module_level_imports(node) -> list[str]:
    """The modules the statements of ``node`` import when it runs (not in functions, not under ``if
    TYPE_CHECKING``)."""
    out = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
            continue
        if isinstance(child, ast.Import):
            out += [a.name for a in child.names]
        elif isinstance(child, ast.ImportFrom) and not child.level:
            out.append(child.module or "")
        else:
            out += _module_level_imports(child)
    return out


def test_the_converter_side_imports_no_torch():
    """Reading a net's definition (inspect, upgrade, deploy) imports no torch: only the converters' torch side
    (converters/modules/) imports it at module level; tests/test_startup.py checks the commands themselves."""
    found = {m: t for m, p in _files().items() if m.startswith(TORCH_FREE) and not m.startswith("converters/modules/")
             and (t := [n for n in _module_level_imports(ast.parse(p.read_text()))
                        if n == "torch" or n.startswith("torch.")])}
    assert not found, found


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
