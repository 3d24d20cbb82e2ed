"""The package installs what it imports: every module imports, and every third-party import is
declared in setup.py (at module level: a core requirement; inside a function: core or an extra).

A fresh virtualenv once failed the demo because TensorFlow stopped pulling in a package the
code relied on; .ci/run now runs the demo in a new virtualenv, and this test catches an
undeclared import without one.
"""
import ast
import importlib.metadata
import pathlib
import re
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "xlm_jax"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], set[str]]:
    """(core requirements, requirements of any extra) of the installed xlm_jax, canonical names."""
    core, extras = set(), set()
    for requirement in importlib.metadata.requires("xlm_jax") or []:
        name = _canonical(re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0))
        (extras if "extra ==" in requirement else core).add(name)
    return core, extras


def _modules() -> list[str]:
    return sorted(".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for path in PACKAGE.rglob("*.py"))


def _third_party_imports() -> dict[str, dict[str, bool]]:
    """top-level import name -> {file: imported at module level?} for non-stdlib, non-xlm_jax imports."""
    found: dict[str, dict[str, bool]] = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "xlm_jax":
                    continue
                files, where = found.setdefault(top, {}), str(path.relative_to(REPO_ROOT))
                files[where] = files.get(where, False) or id(node) in module_level
    return found


def _defines_flags(module: str) -> bool:
    path = REPO_ROOT / (module.replace(".", "/") + ".py")
    return path.exists() and "DEFINE_" in path.read_text(encoding="utf-8")


def test_every_module_imports_in_a_fresh_interpreter():
    """The library modules in one interpreter; each command line (absl flags are global) in its own."""
    modules = _modules()
    assert "xlm_jax.modes.train" in modules and "xlm_jax.benchmarks.train_step" in modules
    commands = [m for m in modules if _defines_flags(m)]
    assert "xlm_jax.main" in commands
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\nprint('ok')"
    for group in [[m for m in modules if m not in commands]] + [[m] for m in commands]:
        result = subprocess.run([sys.executable, "-c", code, *group], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (group, result.stderr[-3000:])


def test_every_third_party_import_is_declared_in_setup_py():
    core, extras = _declared()
    distributions = importlib.metadata.packages_distributions()
    problems = []
    for top, files in sorted(_third_party_imports().items()):
        names = {_canonical(d) for d in distributions.get(top, [])}
        assert names, f"{top} (imported by {sorted(files)}) is not installed here, so it cannot be checked"
        at_module_level = [f for f, module_level in files.items() if module_level]
        if at_module_level and not names & core:
            problems.append(f"{top} ({'/'.join(sorted(names))}) is imported at module level by "
                            f"{at_module_level} but is not in install_requires")
        elif not names & (core | extras):
            problems.append(f"{top} ({'/'.join(sorted(names))}) is imported by {sorted(files)} but setup.py "
                            "declares it nowhere")
    assert not problems, "\n".join(problems)


def test_optional_packages_have_an_extra_and_an_install_command():
    from xlm_jax.extras import EXTRA_OF, install_command

    _, extras = _declared()
    for package, extra in EXTRA_OF.items():
        assert _canonical(package) in extras, f"{package} is not in any extra of setup.py"
        assert f"xlm_jax[{extra}]" in install_command(package)
