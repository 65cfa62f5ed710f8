"""dvc.yaml declares what DVC must see: the code each stage runs, and every `-S` override the
docs print is a key DVC accepts."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

PACKAGE = "gradattn"


def _module_file(module: str) -> Path | None:
    """The file of a `gradattn.*` module (package -> its __init__.py), None for others."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = ROOT / module.replace(".", "/")
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    return None


def _imports(path: Path, dynamic: bool = False) -> set[str]:
    """Every module a file imports, at any depth of its code (function-level imports too);
    with `dynamic`, also those it imports by name (`importlib.import_module("a.b")`, or
    f"a.{name}": every module of package a), as gradattn.sources.registry does."""
    modules: set[str] = set()
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    else:
        package = package.removesuffix(".__init__")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            modules.add(base)
            # `from gradattn import paths` imports the module gradattn.core.paths.
            modules.update(f"{base}.{alias.name}" for alias in node.names)
        elif dynamic and isinstance(node, ast.Call) and getattr(
                node.func, "attr", getattr(node.func, "id", None)) == "import_module":
            modules.update(_named_modules(node.args[0]) if node.args else ())
    return modules


def _named_modules(arg: ast.expr) -> set[str]:
    """The modules an import_module argument can name: a literal, or an f-string's package."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return {arg.value}
    if isinstance(arg, ast.JoinedStr) and isinstance(arg.values[0], ast.Constant):
        package = str(arg.values[0].value).rstrip(".")
        folder = ROOT / package.replace(".", "/")
        return {f"{package}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"}
    raise AssertionError(f"import_module({ast.unparse(arg)}): name the module or its package")


def code_closure(script: Path) -> set[Path]:
    """The script and every gradattn module it reaches through imports (parents included:
    importing gradattn.prepared.batches runs gradattn/__init__.py and
    gradattn/prepared/__init__.py)."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imports(path, dynamic=True):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):
                found = _module_file(".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return seen


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _declared_paths(stage: dict) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", sorted(_stages()))
def test_each_stage_depends_on_all_the_code_it_runs(name):
    stage = _stages()[name]
    body = stage.get("do", stage)
    script = next(w for w in shlex.split(body["cmd"]) if w.endswith(".py"))
    script_path = ROOT / re.sub(r"\$\{[^}]*\}", "x", script)
    deps = _declared_paths(body)
    missing = sorted(
        p.relative_to(ROOT).as_posix()
        for p in code_closure(script_path)
        if p.suffix == ".py" and not _covered(p, deps)
    )
    assert not missing, f"stage {name} runs code it does not list in dvc.yaml deps: {missing}"
    # ... and lists no code it does not run (that would re-run it for nothing).
    reached = {p.relative_to(ROOT).as_posix() for p in code_closure(script_path)}
    unused = [d for d in deps if d.startswith(("gradattn", "stages/"))
              and not any(r == d or r.startswith(d + "/") for r in reached)]
    assert not unused, f"stage {name} lists code it never imports: {unused}"


def test_the_closure_follows_function_level_and_relative_imports(tmp_path):
    # The checker itself: configure reaches the sources the registry imports by name
    # (importlib), gradattn/sources/__init__.py (a parent package's code runs on import) and
    # config.py, and not the models (it checks their options in core.settings, without torch).
    closure = {p.relative_to(ROOT).as_posix() for p in code_closure(ROOT / "stages/configure.py")}
    assert {"gradattn/config.py", "gradattn/core/errors.py", "gradattn/__init__.py",
            "gradattn/sources/__init__.py", "gradattn/sources/cifar10.py"} <= closure
    assert not any(p.startswith("gradattn/models/") for p in closure)
    # A function-level import is followed too.
    script = ROOT / "stages" / "_probe_closure.py"
    try:
        script.write_text("def main():\n    from gradattn.reporting import stats\n")
        reached = {p.relative_to(ROOT).as_posix() for p in code_closure(script)}
    finally:
        script.unlink()
    assert "gradattn/reporting/stats.py" in reached


# The layers of gradattn/, lowest first: a module imports only from its own layer or below
# (README "Layout"). gradattn/config.py is a layer of its own (it validates the whole
# params.yaml, so it sits above the models and the sources it checks names against);
# studies (running experiments) sits above reporting (reading them back), and gradattn/cli.py,
# the `gradattn` command that joins them, on top.
LAYERS = ("core", "models", "prepared", "sources", "config", "training", "analysis",
          "reporting", "studies", "cli")


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _layer(module: str) -> int:
    """The index of `module`'s layer; -1 for the package's own __init__ (imports nothing)."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1
    name = parts[1]
    if name not in LAYERS:
        raise AssertionError(f"{module} is in no layer: add its folder to LAYERS and the README")
    return LAYERS.index(name)


def _import_graph() -> dict[str, set[str]]:
    """module -> the gradattn modules it names in an import (not their parent packages)."""
    modules = _modules()
    return {name: {m for m in _imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_every_import_goes_down_the_layers():
    upward = [f"{src} ({LAYERS[_layer(src)]}) imports {dst} ({LAYERS[_layer(dst)]})"
              for src, targets in _import_graph().items() for dst in targets
              if _layer(dst) > _layer(src)]
    assert not upward, "imports must go down the layers:\n" + "\n".join(upward)


def test_no_import_cycle_anywhere_in_the_package():
    graph, state, cycles = _import_graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]))
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_reporting_imports_nothing_from_studies():
    # Reading results back never starts experiments: reporting/ and studies/ meet only in
    # gradattn/cli.py (the layers say so too; this names the rule).
    graph = _import_graph()
    crossing = sorted(f"{src} imports {dst}" for src, targets in graph.items()
                      if src.startswith(f"{PACKAGE}.reporting")
                      for dst in targets if dst.startswith(f"{PACKAGE}.studies"))
    assert not crossing, "\n".join(crossing)
    assert any(name.startswith(f"{PACKAGE}.studies.") for name in graph)  # the package exists


def test_the_layer_checks_can_fail(monkeypatch):
    # An upward import and a cycle, planted in a copy of the graph, are both found.
    graph = _import_graph()
    graph["gradattn.core.io"] = graph["gradattn.core.io"] | {"gradattn.reporting.table"}
    graph["gradattn.core.errors"] = graph["gradattn.core.errors"] | {"gradattn.core.io"}
    monkeypatch.setattr(__import__(__name__), "_import_graph", lambda: graph)
    with pytest.raises(AssertionError, match="core.io .core. imports gradattn.reporting.table"):
        test_every_import_goes_down_the_layers()
    with pytest.raises(AssertionError, match="core.errors -> gradattn.core.io"):
        test_no_import_cycle_anywhere_in_the_package()


def test_each_stage_depends_on_whole_folders_of_the_package():
    # A stage lists layers (folders), not files: adding a module never edits dvc.yaml.
    for name, stage in _stages().items():
        body = stage.get("do", stage)
        code = [d for d in _declared_paths(body) if d.startswith(PACKAGE + "/")]
        files = [d for d in code if d.endswith(".py")
                 and d not in (f"{PACKAGE}/__init__.py", f"{PACKAGE}/config.py")]
        assert not files, f"stage {name} lists single modules {files}: list their folder"


def shell_blocks(text: str) -> list[str]:
    """The contents of a markdown file's fenced shell blocks (```bash, ```sh, ```console, or
    no language), with backslash-continued lines joined."""
    blocks, current, lang = [], None, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current, lang = [], line.strip().strip("`").strip()
            else:
                if lang in ("", "bash", "sh", "console", "shell"):
                    blocks.append(re.sub(r"\\\n\s*", " ", "\n".join(current)))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def documented_overrides() -> list[tuple[str, list[str]]]:
    """(file, [-S values]) of every `dvc exp run` command printed in README.md and docs/."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        # Inline code in the prose too: `-S key=value` and `dvc exp run ...` spans.
        for span in re.findall(r"`(-S [^`]+|dvc exp run [^`]+)`", doc.read_text()):
            words = shlex.split(span)
            found.append((doc.name, [words[i + 1] for i, w in enumerate(words) if w == "-S"]))
        for block in shell_blocks(doc.read_text()):
            for line in block.splitlines():
                if "dvc exp run" not in line:
                    continue
                lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
                lexer.whitespace_split = True
                commands: list[list[str]] = [[]]
                for word in lexer:
                    if word in ("&&", ";", "||", "|"):
                        commands.append([])
                    else:
                        commands[-1].append(word)
                for cmd in commands:
                    if cmd[:3] != ["dvc", "exp", "run"]:
                        continue
                    sets = [cmd[i + 1] for i, w in enumerate(cmd) if w in ("-S", "--set-param")]
                    if sets:
                        found.append((doc.name, sets))
    return found


def test_the_docs_print_dvc_exp_run_commands():
    # Guards the parser: if it found nothing, the test below would pass vacuously.
    assert len(documented_overrides()) >= 5
    assert any("model.pe=rope" in s for _, sets in documented_overrides() for s in sets)


@pytest.mark.slow
def test_every_documented_override_is_accepted_by_dvc(dvc_repo):
    """DVC itself applies each documented -S (sweeps too) to params.yaml; none is refused."""
    from dvc.repo import Repo
    params = dvc_repo.path / "params.yaml"
    original = params.read_text()
    failures = []
    for doc, sets in documented_overrides():
        # `dvc exp run --queue` validates and applies every override (each value of a sweep)
        # to a copy of params.yaml, then queues without running anything.
        proc = dvc_repo.dvc("exp", "run", "--queue", *[a for s in sets for a in ("-S", s)],
                            check=False)
        if proc.returncode != 0:
            failures.append(f"{doc}: -S {' -S '.join(sets)}: {proc.stderr.strip()[-300:]}")
        assert params.read_text() == original
    with Repo(str(dvc_repo.path)) as repo:
        queued = repo.experiments.celery_queue.iter_queued()
        assert len(list(queued)) > 0
    assert not failures, "\n".join(failures)
