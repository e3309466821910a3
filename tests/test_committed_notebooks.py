"""What a reader sees on a code host: the committed notebooks' outputs are clean and complete.

Every code cell was executed (the notebook is committed with the outputs of a run); no output is a stderr block
(warnings, progress bars), a frozen progress bar, an absolute path of the machine that ran it, or a widget without
a static image; and every notebook's percent source parses as Python. Cells stay readable: at most
MAX_LOGICAL_LINES statements each, and figures are drawn by the library (at most MAX_DRAWING_CALLS
matplotlib calls in a cell), so a reader sees the step, not the plotting code.
"""

import ast
import io
import json
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
MACHINE_PATH = re.compile(r"PosixPath\('/|(?<![\w.])/(?:work|tmp|home|root|Users|var/folders)/")
PROGRESS_BAR = re.compile(r"\d+%\|")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
MAX_LOGICAL_LINES = 15
MAX_DRAWING_CALLS = 2
# a matplotlib call on a figure/axes/pyplot, other than showing, closing or saving the figure
DRAWING_CALL = re.compile(
    r"^\s*(?:(?:fig|ax|axes|axs)\b[\w\[\]]*\.\w+\(|(?:[\w, ]+=\s*)?plt\.(?!show\(|close\()\w+\(|for (?:ax|a) in )",
    re.M,
)


def logical_lines(source: str) -> int:
    """Python logical lines (statements; a bracketed expression over several lines counts once), IPython magics
    and comments not counted."""
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    tokens = tokenize.generate_tokens(io.StringIO(code + "\n").readline)
    return sum(1 for t in tokens if t.type == tokenize.NEWLINE)


def _outputs(nb):
    for k, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            for out in cell.get("outputs", []):
                yield k, cell, out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_outputs_are_clean(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert all(c.get("execution_count") is not None for c in code), (
        "a code cell was committed without running"
    )
    for k, _cell, out in _outputs(nb):
        assert out.get("name") != "stderr", (
            f"cell {k}: a stderr block: {''.join(out.get('text', ''))[:120]!r}"
        )
        text = "".join(out.get("text", "")) + "".join(
            "".join(v) if isinstance(v, list) else str(v)
            for mime, v in out.get("data", {}).items()
            if mime.startswith("text/")
        )
        assert not MACHINE_PATH.search(text), f"cell {k}: a path of the machine that ran it: {text[:160]!r}"
        assert not PROGRESS_BAR.search(text), f"cell {k}: a progress bar frozen in the output"
        data = out.get("data", {})
        assert WIDGET_MIME not in data or "image/png" in data, f"cell {k}: a widget with no static image"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_percent_source_is_valid_python(path):
    ast.parse(path.with_suffix(".py").read_text(), filename=str(path.with_suffix(".py")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_cells_are_short_and_draw_through_the_library(path):
    nb = json.loads(path.read_text())
    for k, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        n = logical_lines(source)
        assert n <= MAX_LOGICAL_LINES, (
            f"cell {k}: {n} statements (at most {MAX_LOGICAL_LINES}): {source[:80]!r}"
        )
        drawing = DRAWING_CALL.findall(source)
        assert len(drawing) <= MAX_DRAWING_CALLS, (
            f"cell {k}: {len(drawing)} matplotlib calls; a figure is drawn by a library function: {drawing}"
        )


def test_the_checks_see_what_they_look_for():
    assert (
        logical_lines("x = dict(\n    a=1,\n    b=2,\n)\n# a comment\n%time y = 1\nfor i in x:\n    print(i)")
        == 3
    )
    plotting = (
        "fig, ax = plt.subplots()\nax.plot(x)\naxes[0].set(title='t')\nfor ax in axes:\n    pass\nplt.show()"
    )
    assert len(DRAWING_CALL.findall(plotting)) == 4
    assert not DRAWING_CALL.findall("fig = saliency_grid(maps)\nsave_figure(fig, 'x', profile=P)\nplt.show()")
    assert MACHINE_PATH.search("PosixPath('/work/main/results/x.png')")
    assert MACHINE_PATH.search("saved to /tmp/abc/fig.png")
    assert not MACHINE_PATH.search("results/figures/04_trojan_auc.png and ../data/cache and 1/2")
    assert PROGRESS_BAR.search("  0%|          | 0/64 [00:00<?, ?it/s]")
