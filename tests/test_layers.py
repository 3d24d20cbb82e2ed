"""The layers of docs/architecture.md, enforced: every import in xlm_jax/, top-level and lazy alike,
points to its own layer or one below, and no modules or packages import each other in a circle.

The layer table is read from docs/architecture.md itself (the fenced block after "## Layer
order"), so the page and the code cannot tell different stories.
"""
import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xlm_jax"
MAX_LINES = 400


def declared_layers(page: pathlib.Path = ROOT / "docs" / "architecture.md") -> dict[str, int]:
    """{top-level module or package of xlm_jax: layer} from the page's layer table: lines
    `N  name, name, ...  what they are` in the block that follows "## Layer order"."""
    text = page.read_text(encoding="utf-8")
    section = text.split("## Layer order", 1)[1]
    block = section.split("```", 2)[1]
    layers = {}
    for line in block.splitlines():
        match = re.match(r"\s*(\d+)\s+(\S.*?)(?:\s{2,}.*)?$", line)
        if match:
            for name in re.findall(r"[a-z_]+", match.group(2).split("  ")[0]):
                layers[name] = int(match.group(1))
    return layers


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path, root: pathlib.Path = ROOT, from_packages: bool = False):
    """(line, imported xlm_jax module) of every import statement in the file, at any depth; with
    `from_packages`, also the module a `from ... import` names (`from xlm_jax import config` runs
    xlm_jax/__init__.py too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from xlm_jax import config` imports the submodule; `from xlm_jax.config import
            # validate`, the module (edges() resolves a name that is not a module to its module)
            targets = [f"{module}.{alias.name}" for alias in node.names] + ([module] if from_packages else [])
        else:
            continue
        for target in targets:
            if target == "xlm_jax" or target.startswith("xlm_jax."):
                yield node.lineno, target


def unit(module: str) -> str:
    """The layer unit of a module: the top-level package or module under xlm_jax."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def edges(from_packages: bool = False):
    """(file:line, importing module, imported module) over xlm_jax/, the imported module resolved
    to a file that exists (a `from package import name` of a non-module name: the package)."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for line, target in imports(path, from_packages=from_packages):
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != source:
                found.append((f"{path.relative_to(ROOT)}:{line}", source, target))
    return sorted(set(found))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_declared_layer():
    layers = declared_layers()
    units = {unit(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units - set(layers) == set(), "add these to docs/architecture.md's layer table"
    assert set(layers) - units == set(), "the layer table names modules that do not exist"


def test_no_import_points_up():
    layers = declared_layers()
    upward = [f"{where}: {source} (layer {layers[unit(source)]}) imports {target} (layer {layers[unit(target)]})"
              for where, source, target in edges()
              if unit(source) != unit(target) and layers[unit(target)] > layers[unit(source)]]
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


@pytest.mark.parametrize("level", ["module", "package"])
def test_no_circles(level):
    graph, where = {}, {}
    for line, source, target in edges(from_packages=level == "module"):
        a, b = (source, target) if level == "module" else (unit(source), unit(target))
        if a != b:
            graph.setdefault(a, set()).add(b)
            where.setdefault((a, b), line)
    found = cycles(graph)
    report = [" <-> ".join(c) + ": " + "; ".join(f"{where[(a, b)]} ({a} -> {b})" for a in c for b in c
                                                 if (a, b) in where) for c in found]
    assert not found, f"{level}s importing each other in a circle:\n" + "\n".join(report)


def test_the_checker_sees_an_upward_lazy_import_and_a_circle(tmp_path):
    """The checks above can fail: a lazy import from a function body is found, and a circle is."""
    path = tmp_path / "xlm_jax" / "models" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text("def f():\n    from xlm_jax.train.builder import build_trainer\n", encoding="utf-8")
    assert list(imports(path, tmp_path)) == [(2, "xlm_jax.train.builder.build_trainer")]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_long_files_say_why():
    """A file past ~400 lines is usually two ideas; one that stays long says why in its docstring."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_LINES:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "Why one file" not in doc:
                long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert not long, f"files over {MAX_LINES} lines without 'Why one file' in their docstring:\n" + "\n".join(long)
