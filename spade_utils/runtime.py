"""Running on a device without disturbing the caller: device choice, dtype, threads, flags, train/eval state.

The policy for the caller's model is one: the library never moves the caller's model between
devices (work that needs another device runs on a copy), and anything it switches (per-module
train/eval flags, the flush-denormal flag, the thread count) is put back as found, also after
an exception.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch
from torch import nn


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``.

    Raises TypeError for anything that is not a str or torch.device, ValueError for an unknown name.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device: {err}") from err


def state_hash(model: nn.Module) -> str:
    """16 hex digits of sha256 over every state-dict entry's name, dtype, shape and bytes (sorted by name): equal
    for equal weights whatever device they sit on; the key of spade-run's settings and of cached fits."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model without any)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """Floating dtype of the model's first floating parameter (float32 for a model without any)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def flush_denormal_enabled() -> bool:
    """Whether the process-global flush-denormal (FTZ/DAZ) flag is on, read by computing with a denormal."""
    tiny = torch.tensor([1e-40] * 16, dtype=torch.float32)  # a denormal float32, vectorised path
    return bool((tiny * 1.0 == 0).all())


@contextlib.contextmanager
def flush_denormals():
    """Treat denormal floats as zero inside the block (rank-deficient statistics make them common and
    they slow CPU arithmetic ~10x); the process-global flag is put back as it was found."""
    before = flush_denormal_enabled()
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(before)


@contextlib.contextmanager
def one_cpu_thread():
    """Run the block on one CPU thread, then restore the intra-op thread count (also after an error).

    Hundreds of tiny ops cost more in thread hand-offs than in work (SparseGPT's column loop:
    1.05 s vs 0.01 s per 512 x 128 block with 2 threads vs 1)."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@contextlib.contextmanager
def preserved_training_flags(model: nn.Module):
    """Restore every submodule's own ``training`` flag on exit (``model.train(b)`` flattens them)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """``model.eval()`` inside the block; each submodule's flag restored afterwards."""
    with preserved_training_flags(model):
        model.eval()
        yield model
