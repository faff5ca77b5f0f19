"""The package graph has no cycle: every import of every module, those inside functions
included, goes from a package to one below it. The layers, bottom up: protocol and kvcache;
drafter, verifier and gateway; models; launch; bench; distill; ouroboros (the command)."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ({"protocol", "kvcache"}, {"drafter", "verifier", "gateway"}, {"models"}, {"launch"}, {"bench"}, {"distill"},
          {"ouroboros"})
LEVEL = {package: level for level, layer in enumerate(LAYERS) for package in layer}
PACKAGES = tuple(LEVEL)


def imported_packages(path: Path) -> dict[str, int]:
    """Our packages that the module imports (anywhere in it), each with a line that does."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                found.setdefault(top, node.lineno)
    return found


def package_graph() -> dict[str, dict[str, str]]:
    """package -> {imported package: 'file:line' of one import}"""
    graph: dict[str, dict[str, str]] = {package: {} for package in PACKAGES}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for other, line in imported_packages(path).items():
                if other != package:
                    graph[package].setdefault(other, f"{path.relative_to(ROOT)}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in graph:
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_graph_has_no_cycle():
    graph = package_graph()
    cycle = find_cycle(graph)
    where = [graph[a][b] for a, b in zip(cycle, cycle[1:])] if cycle else []
    assert cycle is None, f"import cycle {' -> '.join(cycle)}: {', '.join(where)}"


def test_every_package_imports_only_packages_below_it():
    graph = package_graph()
    upward = {f"{package} -> {other} ({where})" for package, imports in graph.items()
              for other, where in imports.items() if LEVEL[other] >= LEVEL[package]}
    assert not upward, f"imports of a package at or above the importer's layer: {sorted(upward)}"


def test_the_protocol_imports_no_torch_and_drafter_and_verifier_never_meet():
    for path in (ROOT / "protocol").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert "torch" not in names, path
    graph = package_graph()
    assert "verifier" not in graph["drafter"] and "drafter" not in graph["verifier"]


def test_the_command_line_parses_without_torch():
    """`ouroboros --help`, and the parent of `ouroboros serve`, load no model library: every
    command's flags live in torch-free modules, and a command imports torch only when it runs."""
    script = ("import sys, ouroboros.cli as cli; parser = cli.build_parser(); "
              "[parser.parse_args(argv) for argv in (['serve'], ['bench'], ['stress'], ['eval-draft'], "
              "['train-draft', '--out', 'x'], ['draft-data', '--out', 'x'], ['http-door', '--connect', 'tcp://x:1'])]; "
              "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]", found.stdout + found.stderr
