"""The house's floors: each package imports only the floors below it (docs/architecture.md),
read from every module's import statements, including those inside functions."""

import ast
from pathlib import Path

import lstm_scratch

PACKAGE = Path(lstm_scratch.__file__).parent
FLOORS = ["errors", "reference", "fast", "model", "training", "app"]  # bottom to top
APART = {"bench": set(FLOORS)}  # imports any floor; none imports it but the bench command


def imported_modules(path: Path) -> set[str]:
    """The lstm_scratch modules a file imports (absolute names), anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import (use lstm_scratch.…)")
        if isinstance(node, ast.ImportFrom) and node.module.startswith("lstm_scratch"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lstm_scratch")}
    return found


def floor_of(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else None


def module_imports() -> dict[str, set[str]]:
    """'floor/module' -> the floors it imports."""
    table = {}
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).as_posix()
        table[name] = {floor_of(m) for m in imported_modules(path)} - {None}
    return table


def test_every_floor_imports_only_the_floors_below_it():
    for name, floors in module_imports().items():
        home = name.split("/")[0].removesuffix(".py")
        if home in APART:
            assert floors <= APART[home] | {home}, name
        elif home in FLOORS:
            allowed = set(FLOORS[: FLOORS.index(home) + 1])
            allowed |= {"bench"} if home == "app" else set()  # the bench command, on demand
            assert floors <= allowed, f"{name} imports {sorted(floors - allowed)}"


def test_the_reference_imports_nothing_else_of_the_package():
    for path in (PACKAGE / "reference").glob("*.py"):
        outside = {m for m in imported_modules(path) if floor_of(m) != "reference"}
        assert not outside, f"{path.name} imports {sorted(outside)}"


def test_only_the_bench_command_imports_the_bench_and_only_when_run():
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "bench":
            continue
        benches = {m for m in imported_modules(path) if floor_of(m) == "bench"}
        assert not benches or path.name == "cli.py", path
    cli = ast.parse((PACKAGE / "app" / "cli.py").read_text(encoding="utf-8"))
    on_import = set()  # modules named by the module's own statements, not inside functions
    for node in cli.body:
        if isinstance(node, ast.ImportFrom):
            on_import.add(node.module)
        elif isinstance(node, ast.Import):
            on_import |= {alias.name for alias in node.names}
    on_import = {name for name in on_import if name.startswith("lstm_scratch.bench")}
    assert not on_import, "app/cli.py imports the bench when it is imported"


def test_no_import_cycles_between_modules():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(("lstm_scratch", *path.relative_to(PACKAGE).with_suffix("").parts))
        targets = set()
        for dotted in imported_modules(path):  # "pkg.module.name": the module, or a module itself
            as_file = PACKAGE.joinpath(*dotted.split(".")[1:]).with_suffix(".py")
            targets.add(dotted if as_file.exists() else dotted.rpartition(".")[0])
        graph[module.removesuffix(".__init__")] = targets
    visiting, done = [], set()

    def visit(node):
        if node in done:
            return
        assert node not in visiting, " -> ".join([*visiting[visiting.index(node) :], node])
        visiting.append(node)
        for target in graph.get(node, ()):
            visit(target)
        visiting.pop()
        done.add(node)

    for node in graph:
        visit(node)
