"""The paper path, rehearsed at notebook level: notebooks 02-05 with ``SOURCE="paper"`` at the smoke sizes.

Every cell that only the paper source reaches runs here, on the stand-ins of :mod:`paper_standins` (random
ResNet-50 weights under torchvision's file name in a temporary ``TORCH_HOME``, ImageNet-layout folders made
of the shipped photos, a checkpoint in the robustness format, four RGBA trigger PNGs), passed through the
notebooks' own parameters exactly as ``make figures PROFILE=smoke SOURCE=paper IMAGENET_VAL=...`` passes
them. The checks say that the paper source was really used: the tables name ResNet-50 layers, ImageNet
validation files with their true classes, the paper's backdoor targets and the variant and method names
that ``results/tables/04_trojan_auc.csv`` keeps.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from notebook_runner import execute
from paper_standins import written_standins

from spade_utils.backdoor import PAPER_TARGETS
from spade_utils.data import imagenet_classes
from spade_utils.saliency import SALIENCY_METHODS

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {p.name[:2]: p for p in sorted((ROOT / "notebooks").glob("0[2-5]_*.ipynb"))}
CELL_TIMEOUT = 600  # seconds per cell: a smoke cell on ResNet-50 takes tens of seconds on one core


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    with written_standins(tmp_path_factory.mktemp("paper-notebooks"), favour_val_classes=True) as made:
        yield made


def _run(key, standins, tmp_path, monkeypatch) -> Path:
    """Execute notebook ``key`` ("02".."05") on the paper source; returns the folder of its smoke tables."""
    monkeypatch.setenv("SPADE_HEADLESS", "1")
    monkeypatch.setenv("TORCH_HOME", str(standins.torch_home))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # smoke results go to $TMPDIR/spade-results-smoke
    monkeypatch.delenv("SPADE_RESULTS_DIR", raising=False)
    notebook = NOTEBOOKS[key]
    parameters = {"PROFILE": "smoke", "SOURCE": "paper", **standins.notebook_parameters()}
    execute(notebook, tmp_path / notebook.name, parameters, cell_timeout=CELL_TIMEOUT)
    return tmp_path / "spade-results-smoke" / "tables"


@pytest.mark.slow
def test_notebook_02_on_resnet50(standins, tmp_path, monkeypatch):
    tables = _run("02", standins, tmp_path, monkeypatch)
    layers = set(pd.read_csv(tables / "02_real_layer_errors.csv")["layer"])
    assert layers == {
        "1x1 conv (layer1.0.conv1)",
        "3x3 conv (layer2.0.conv2)",
        "late expansion (layer4.2.conv3)",
        "classifier (fc)",
    }


@pytest.mark.slow
def test_notebook_03_scores_validation_images_for_their_true_class(standins, tmp_path, monkeypatch):
    tables = _run("03", standins, tmp_path, monkeypatch)
    per_image = pd.read_csv(tables / "03_insertion_deletion_per_image.csv")
    assert len(per_image) and per_image["photo"].str.startswith("ILSVRC2012_val_").all()
    # the oracle: the rank of the image's synset folder among the 1000 sorted ones
    synsets = sorted(p.name for p in standins.imagenet_val.iterdir())
    folder_of = {f.stem: f.parent.name for f in standins.imagenet_val.rglob("*.JPEG")}
    assert (per_image["class"] == [synsets.index(folder_of[p]) for p in per_image["photo"]]).all()
    assert set(pd.read_csv(tables / "03_trace_records.csv")["layer"]) == {"fc"}  # ResNet-50's classifier


@pytest.mark.slow
def test_notebook_04_table_1_names(standins, tmp_path, monkeypatch):
    tables = _run("04", standins, tmp_path, monkeypatch)
    table = pd.read_csv(tables / "04_trojan_auc.csv")
    assert set(table["variant"]) == {"Clean original", "Dense", "Sparse FC", "FastSPADE (SparseGPT)"}
    assert set(table["method"]) - {"average"} <= set(SALIENCY_METHODS)
    attack = pd.read_csv(tables / "04_backdoor_attack_success.csv")
    assert dict(zip(attack["trigger"], attack["target"], strict=True)) == dict(PAPER_TARGETS)


@pytest.mark.slow
def test_notebook_05_on_the_authors_triggers(standins, tmp_path, monkeypatch):
    tables = _run("05", standins, tmp_path, monkeypatch)
    table = pd.read_csv(tables / "05_trigger_in_visualizations.csv")
    classes = imagenet_classes()
    assert len(table) and all(
        classes[PAPER_TARGETS[t]] == n for t, n in zip(table["trigger"], table["target"], strict=True)
    )
