"""Each notebook's percent-format .py source and its .ipynb hold the same cells (outputs aside)."""

from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SOURCES = sorted(NOTEBOOK_DIR.glob("[0-9]*.py"))


def _cells(nb):
    return [
        (c.cell_type, c.source.strip())
        for c in nb.cells
        if "injected-parameters" not in c.metadata.get("tags", []) and c.source.strip()
    ]


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_ipynb_matches_its_py_source(source):
    import jupytext

    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run jupytext --to ipynb {source.name}"
    assert _cells(jupytext.read(source)) == _cells(jupytext.read(ipynb)), (
        f"{ipynb.name} and {source.name} differ: run `jupytext --sync` or regenerate the .ipynb"
    )
