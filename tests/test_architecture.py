"""The import direction of ARCHITECTURE.md, checked on the source: no module imports from a layer above its own."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "spade_utils"

# lowest first; a module may import from its own layer or any layer below
LAYERS = {
    "basics": {"runtime", "validation", "widgets", "paths"},
    "assets": {
        "inputs",
        "data",
        "models",
        "archs",
        "plotting",
        "trojan_figures",
        "toy_figures",
        "solver_figures",
    },
    "engine": {
        "augment",
        "hessian",
        "solvers",
        "obc",
        "layer_probe",
        "layer_select",
        "trace_steps",
        "spade",
        "batched",
    },
    "interpretation": {
        "saliency",
        "attribution_prep",
        "featvis",
        "metrics",
        "intervals",
        "map_bundle",
        "null_distribution",
    },
    "experiments": {
        "toy",
        "backdoor",
        "baselines",
        "layer_study",
        "insertion_tuning",
        "bruteforce",
        "exercises",
        "run",
        "run_shards",
        "explorer",
        "human_study",
        "study_figures",
    },
}
RANK = {module: rank for rank, members in enumerate(LAYERS.values()) for module in members}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.name == "__init__" and rel.parent == Path("."):
            continue  # the lazy front door re-exports from every layer by design
        yield rel.parts[0], path


def _imported(path: Path, top: str, root: Path = PACKAGE) -> set[str]:
    """First-level spade_utils modules imported by a file (relative or absolute, anywhere in it)."""
    tree = ast.parse(path.read_text())
    depth_of_file = (
        len(path.relative_to(root).parts) - 1
    )  # 0 for spade_utils/x.py, 1 for spade_utils/backdoor/x.py
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] == "spade_utils" and len(parts) > 1:
                    found.add(parts[1])
                continue
            up = node.level - 1  # levels above the file's own package
            if up < depth_of_file:  # stays inside the file's own subpackage
                continue
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "spade_utils" and len(parts) > 1:
                    found.add(parts[1])
    found.discard(top)
    return found


def test_every_module_has_a_layer():
    missing = sorted({top for top, _ in _modules()} - set(RANK))
    assert not missing, f"add these modules to a layer in ARCHITECTURE.md and this test: {missing}"


@pytest.mark.parametrize("top,path", list(_modules()), ids=lambda v: str(v) if isinstance(v, str) else v.name)
def test_imports_flow_down(top, path):
    above = sorted(m for m in _imported(path, top) if m in RANK and RANK[m] > RANK[top])
    assert not above, f"{path.relative_to(PACKAGE)} ({top}) imports from a higher layer: {above}"


def test_the_checker_sees_a_violation(tmp_path):
    root = tmp_path / "spade_utils"
    (root / "backdoor").mkdir(parents=True)
    flat, nested = root / "hessian.py", root / "backdoor" / "implant.py"
    flat.write_text(
        "from .backdoor import implant\nfrom spade_utils.toy import ToyRecipe\nfrom . import metrics\n"
    )
    nested.write_text(
        "from .poison import poison\nfrom ..spade import spade_trace\nfrom ..featvis import visualize\n"
    )
    assert _imported(flat, "hessian", root) == {"backdoor", "toy", "metrics"}
    assert _imported(nested, "backdoor", root) == {"spade", "featvis"}


def test_every_public_function_and_class_is_documented():
    """The front-door standard for the whole package: each public function, class and method says what it does."""
    import importlib
    import inspect
    import pkgutil

    import spade_utils

    thin = []
    for info in pkgutil.walk_packages(spade_utils.__path__, "spade_utils."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", None) != module.__name__:
                continue  # imported, documented where it is defined
            if len(inspect.getdoc(obj) or "") < 40:
                thin.append(f"{info.name}.{name}")
            if inspect.isclass(obj):
                thin += [
                    f"{info.name}.{name}.{m}"
                    for m, f in vars(obj).items()
                    if not m.startswith("_") and inspect.isfunction(f) and len(inspect.getdoc(f) or "") < 10
                ]
    assert not thin, f"public names without a real docstring: {thin}"
