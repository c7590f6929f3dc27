"""Dependencies run one way: nothing outside tests/ uses tests/, and no import cycles.

Every project .py file outside tests/ (and the two venvs) is parsed with ast; each import is an
edge: module level or inside a function (lazy), absolute or relative (``from . import x``), and
``importlib.import_module("name")`` with a literal name. A dotted name resolves as Python does
from the project root (a package before a module of the same name, so ``import search`` is
search/, not search.py); a script folder without __init__.py (tools/, benchmarks/) also finds its
own siblings. ``from a.b import c`` is an edge to a/b/c.py when that is a module, else to a/b.
Parent packages' __init__ files are not edges of their submodules: importing a.b.c runs
a/__init__.py, but a package that re-exports its own submodules is not a cycle to untangle.
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = {"tests", "runs", "docs", "__pycache__"}


def project_files(root):
    """Paths (relative, with /) of the .py files outside tests/, hidden folders and venvs."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP and not d.startswith("."))
        found += [os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/")
                  for f in sorted(files) if f.endswith(".py")]
    return found


def resolve(root, dotted, base=""):
    """The file (relative path) that ``import dotted`` loads from ``root/base``, or None."""
    path = os.path.join(base, *dotted.split(".")) if dotted else base
    for candidate in (os.path.join(path, "__init__.py"), path + ".py"):
        if os.path.isfile(os.path.join(root, candidate)):
            return os.path.normpath(candidate).replace(os.sep, "/")
    return None


def imported_names(tree, path):
    """(dotted module, [names]) per import in ``tree``; relative imports made absolute."""
    package = os.path.dirname(path).replace("/", ".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[:len(parts) - (node.level - 1)]
                module = ".".join(p for p in parts + [module] if p)
            yield module, [a.name for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            yield node.args[0].value, []


def import_graph(root):
    """{file: {files it imports}} over the project's own modules."""
    graph = {}
    for path in project_files(root):
        with open(os.path.join(root, path), encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        folder = os.path.dirname(path)
        script_folder = not os.path.isfile(os.path.join(root, folder, "__init__.py"))
        edges = set()
        for module, names in imported_names(tree, path):
            bases = [""] + ([folder] if script_folder and folder else [])
            for base in bases:
                targets = [resolve(root, module + "." + n if module else n, base) for n in names]
                targets = [t for t in targets if t] or [resolve(root, module, base)]
                if targets[0]:
                    edges.update(targets)
                    break
        edges.discard(path)
        graph[path] = edges
    return graph


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def describe(graph, component):
    """One import chain around a cycle, e.g. ``a.py -> b.py -> a.py``."""
    members, start = set(component), component[0]
    paths, queue = {start: [start]}, [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                return " -> ".join(paths[v] + [start])
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return " <-> ".join(component)


def uses_of_tests(root):
    """'file: what' for every import of tests/ and every path into tests/ built in a call
    (``os.path.join(ROOT, "tests", ...)``, ``sys.path.insert(0, "tests/...")``)."""
    found = []
    for path in project_files(root):
        with open(os.path.join(root, path), encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for module, names in imported_names(tree, path):
            if module.split(".")[0] == "tests" or (not module and "tests" in names):
                found.append("%s: imports %s" % (path, module or "tests"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for arg in node.args:
                    if (isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                            and arg.value.split("/")[0].split(os.sep)[0] == "tests"):
                        found.append("%s:%d: path %r" % (path, node.lineno, arg.value))
    return found


def test_nothing_outside_tests_uses_tests():
    found = uses_of_tests(ROOT)
    assert not found, "outside tests/, these use tests/:\n" + "\n".join(found)


def test_the_import_graph_has_no_cycles():
    graph = import_graph(ROOT)
    assert len(graph) > 100 and any(graph.values())  # the walk found the project
    found = [describe(graph, c) for c in cycles(graph)]
    assert not found, "import cycles:\n" + "\n".join(found)


def test_the_torch_reference_imports_nothing_of_the_project():
    """torch_reference runs under the PyTorch venv (no MegEngine) and is the independent side of
    every comparison: it shares no code with what it checks."""
    graph = import_graph(ROOT)
    own = [p for p in graph if p.startswith("torch_reference/")]
    assert own and {p: sorted(graph[p]) for p in own if graph[p] - set(own)} == {}


def test_the_checks_catch_a_planted_cycle_and_a_use_of_tests(tmp_path):
    """The same checks on a small tree: a lazy relative import closing a three-module cycle, a
    package re-exporting its submodule (no cycle), a script folder, and a path into tests/."""
    files = {
        "pkg/__init__.py": "from .a import A\n",
        "pkg/a.py": "from pkg.b import B\nA = 1\n",
        "pkg/b.py": "import pkg.c as c\nB = 2\n",
        "pkg/c.py": "def f():\n    from . import a\n    return a\n",
        "lib.py": "import importlib\nimportlib.import_module('tests.helpers')\n",
        "tools/run.py": "import os\nimport helper\nopen(os.path.join('tests', 'data'))\n",
        "tools/helper.py": "import pkg\n",
        "tests/helpers.py": "import lib\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(str(tmp_path))
    assert graph["tools/run.py"] == {"tools/helper.py"} and "tests/helpers.py" not in graph
    assert graph["pkg/c.py"] == {"pkg/a.py"}
    assert cycles(graph) == [["pkg/a.py", "pkg/b.py", "pkg/c.py"]]
    assert describe(graph, cycles(graph)[0]) == "pkg/a.py -> pkg/b.py -> pkg/c.py -> pkg/a.py"
    assert uses_of_tests(str(tmp_path)) == ["lib.py: imports tests.helpers",
                                            "tools/run.py:3: path 'tests'"]
