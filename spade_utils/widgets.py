"""Interactive cells that never hang a headless run.

A notebook run by papermill, ``jupyter nbconvert --execute`` or any other nbclient-based runner has no
front end that renders ipywidgets, and nbclient can wait forever on the comm messages a widget sends
(jupyter/nbclient#312: an ``interact`` cell hung 2 of 9 smoke runs of notebook 01). So an interactive
cell calls :func:`interact_or_draw`: with a front end attached it shows the widgets; without one it calls
the drawing function once with its default arguments, which leaves a static figure in the cell.
"""

from __future__ import annotations

import inspect
import numbers
import os
from collections.abc import Callable, Sequence
from typing import Any

HEADLESS_ENV = "SPADE_HEADLESS"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _shell():
    """The running IPython shell, or None (plain Python, or IPython not installed)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _forced_headless() -> bool:
    value = os.environ.get(HEADLESS_ENV)
    if value is None or value.strip().lower() in _FALSE:
        return False
    if value.strip().lower() in _TRUE:
        return True
    raise ValueError(
        f"environment variable {HEADLESS_ENV} must be one of {sorted(_TRUE | _FALSE - {''})} or empty, got {value!r}"
    )


def frontend_attached() -> bool:
    """Whether widgets displayed now would reach a front end that renders them (JupyterLab, Notebook, VS Code).

    False, checked in this order, when
      1. ``$SPADE_HEADLESS`` is ``1``/``true``/``yes``/``on`` (``make figures`` and the tests set it);
      2. there is no IPython kernel (plain Python, a script, terminal IPython);
      3. the request that is running the current cell does not allow stdin (``allow_stdin`` in the
         execute request). Interactive front ends allow it so that ``input()`` works; nbclient, hence
         papermill and ``nbconvert --execute``, always turns it off. (Voila also turns it off: there the
         cell draws its static figure.)
      4. ipywidgets is not installed.
    Otherwise True. Never blocks and never sends a message to the front end.

    Raises ValueError when ``$SPADE_HEADLESS`` holds something other than a yes/no word.
    """
    if _forced_headless():
        return False
    shell = _shell()
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return False
    get_parent = getattr(kernel, "get_parent", None)  # ipykernel >= 6
    parent = get_parent("shell") if get_parent is not None else getattr(kernel, "_parent_header", None)
    content = parent.get("content", {}) if isinstance(parent, dict) else {}
    if not content.get("allow_stdin", False):
        return False
    import importlib.util

    return importlib.util.find_spec("ipywidgets") is not None


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def interact_or_draw(fn: Callable[..., Any], /, **controls: Sequence) -> Any:
    """Show ``fn`` under one widget per control when a front end is attached; else call ``fn()`` once.

    Parameters
    ----------
    fn : callable that draws (e.g. ends with ``plt.show()``). Every controlled parameter must have a default:
        the default is the widget's initial value and what the static figure shows.
    **controls : parameter name -> non-empty sequence of the values the widget offers. The default must be
        one of them. All numbers -> an ``ipywidgets.SelectionSlider``; anything else -> a ``Dropdown``.

    Returns
    -------
    The ``ipywidgets.interactive`` widget (already displayed) when :func:`frontend_attached` is true, else what
    ``fn()`` returns. Without a front end no widget is ever created, so no comm message is sent.

    Raises
    ------
    TypeError if ``fn`` is not callable, no control is given, or a control name is not a parameter of ``fn``
    with a default; ValueError if a control's options are empty or do not contain the default. All checks run
    before anything is drawn.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not controls:
        raise TypeError("interact_or_draw needs at least one control (name=[options...])")
    params = inspect.signature(fn).parameters
    defaults = {}
    for name, options in controls.items():
        param = params.get(name)
        if param is None or param.default is inspect.Parameter.empty:
            raise TypeError(f"control {name!r} must name a parameter of {fn.__name__} that has a default")
        if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
            raise TypeError(f"control {name!r} must be a sequence of options, got {type(options).__name__}")
        if len(options) == 0:
            raise ValueError(f"control {name!r} has no options")
        if param.default not in options:
            raise ValueError(
                f"control {name!r}: the default {param.default!r} of {fn.__name__} is not one of {list(options)}"
            )
        defaults[name] = param.default
    if not frontend_attached():
        return fn(**defaults)

    import ipywidgets
    from IPython.display import display

    widgets = {}
    for name, options in controls.items():
        kind = ipywidgets.SelectionSlider if all(_is_number(v) for v in options) else ipywidgets.Dropdown
        widgets[name] = kind(options=list(options), value=defaults[name], description=name)
    live = ipywidgets.interactive(fn, **widgets)
    display(live)
    return live


def progress_bar(iterable=None, *, disable: bool = False, **kwargs):
    """A tqdm progress bar that is safe headless: what ``tqdm.auto.tqdm`` gives, minus the headless widget.

    - a front end is attached (:func:`frontend_attached`): ``tqdm.notebook.tqdm`` (an ipywidgets bar);
    - an IPython kernel without a front end (papermill, ``nbconvert --execute``): a disabled ``tqdm.std.tqdm``.
      ``tqdm.auto`` would create ipywidgets there too, which is the comm traffic that can hang nbclient
      (jupyter/nbclient#312) and leaves frozen bars in saved notebooks; a text bar would leave stderr blocks;
    - anywhere else (a script, a terminal): ``tqdm.std.tqdm`` on stderr.
    ``iterable``, ``disable`` and ``**kwargs`` are tqdm's own (``desc``, ``total``, ``leave``, ``unit``...).
    """
    from tqdm.std import tqdm as text_tqdm

    if not disable and frontend_attached():
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(iterable, disable=disable, **kwargs)
    in_kernel = getattr(_shell(), "kernel", None) is not None
    return text_tqdm(iterable, disable=disable or in_kernel, **kwargs)
