"""SPADE utilities: per-sample sparse traces of a network (Sparsity-Guided Debugging, ICML 2024) and the
interpretability code around them.

The front door::

    from spade_utils import spade_trace, spade_pruned_copy, load_model, sample_image, attribute, visualize

Names are imported on first use (PEP 562), so ``import spade_utils`` stays cheap and a notebook that
only needs the toy does not load Captum, Zennit or Lucent.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# public name -> module that defines it
_EXPORTS = {
    "spade_trace": "spade",
    "spade_pruned_copy": "spade",
    "SpadeTrace": "spade",
    "load_model": "models",
    "load_robustness_checkpoint": "models",
    "sample_image": "data",
    "preprocess": "data",
    "denormalize": "data",
    "attribute": "saliency",
    "visualize": "featvis",
    "solve": "solvers",
    "InputSpec": "inputs",
    "resolve_device": "runtime",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'spade_utils' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
