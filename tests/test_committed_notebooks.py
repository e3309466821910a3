"""What a reader sees on a code host: the committed notebooks' outputs are clean and complete.

Every code cell was executed (the notebook is committed with the outputs of a run); no output is a stderr block
(warnings, progress bars), a frozen progress bar, an absolute path of the machine that ran it, or a widget without
a static image; and every notebook's percent source parses as Python.
"""

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
MACHINE_PATH = re.compile(r"PosixPath\('/|(?<![\w.])/(?:work|tmp|home|root|Users|var/folders)/")
PROGRESS_BAR = re.compile(r"\d+%\|")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


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


def test_the_checks_see_what_they_look_for():
    assert MACHINE_PATH.search("PosixPath('/work/main/results/x.png')")
    assert MACHINE_PATH.search("saved to /tmp/abc/fig.png")
    assert not MACHINE_PATH.search("results/figures/04_trojan_auc.png and ../data/cache and 1/2")
    assert PROGRESS_BAR.search("  0%|          | 0/64 [00:00<?, ?it/s]")
