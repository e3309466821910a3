import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _results_to_tmp(tmp_path, monkeypatch):
    """No test ever writes into the committed results/ folder."""
    monkeypatch.setenv("SPADE_RESULTS_DIR", str(tmp_path / "results"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
