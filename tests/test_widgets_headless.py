"""Widgets only when a front end is attached; a static figure otherwise (headless clients can hang on widget
comm messages, jupyter/nbclient#312)."""

from types import SimpleNamespace

import pytest

from spade_utils import widgets


def _fake_kernel(monkeypatch, allow_stdin):
    parent = {} if allow_stdin is None else {"content": {"code": "", "allow_stdin": allow_stdin}}
    kernel = SimpleNamespace(get_parent=lambda channel=None: parent)
    monkeypatch.setattr(widgets, "_shell", lambda: SimpleNamespace(kernel=kernel))


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(widgets.HEADLESS_ENV, raising=False)


def _no_widgets_allowed(monkeypatch):
    import ipywidgets

    def boom(*args, **kwargs):
        raise AssertionError("a widget was created headless")

    for name in ("interactive", "interact", "SelectionSlider", "Dropdown"):
        monkeypatch.setattr(ipywidgets, name, boom)


def test_plain_python_has_no_front_end(no_env):
    assert widgets.frontend_attached() is False  # pytest: no IPython kernel


@pytest.mark.parametrize("allow_stdin", [False, None])
def test_a_request_without_stdin_is_headless(monkeypatch, no_env, allow_stdin):
    _fake_kernel(monkeypatch, allow_stdin)
    assert widgets.frontend_attached() is False


def test_interactive_front_end_is_detected(monkeypatch, no_env):
    _fake_kernel(monkeypatch, True)
    assert widgets.frontend_attached() is True


@pytest.mark.parametrize(
    "value, attached", [("1", False), ("true", False), ("ON", False), ("0", True), ("", True)]
)
def test_env_var_forces_headless(monkeypatch, value, attached):
    _fake_kernel(monkeypatch, True)
    monkeypatch.setenv(widgets.HEADLESS_ENV, value)
    assert widgets.frontend_attached() is attached


def test_env_var_garbage_is_refused(monkeypatch):
    monkeypatch.setenv(widgets.HEADLESS_ENV, "maybe")
    with pytest.raises(ValueError, match=widgets.HEADLESS_ENV):
        widgets.frontend_attached()


def _recorder():
    calls = []

    def draw(sparsity=0.9, solver="obc", other=1):
        calls.append((sparsity, solver, other))
        return "drawn"

    return draw, calls


def test_headless_draws_once_with_defaults_and_creates_no_widget(monkeypatch, no_env):
    _fake_kernel(monkeypatch, False)
    _no_widgets_allowed(monkeypatch)
    draw, calls = _recorder()
    assert widgets.interact_or_draw(draw, sparsity=[0.0, 0.5, 0.9], solver=["sparsegpt", "obc"]) == "drawn"
    assert calls == [(0.9, "obc", 1)]


def test_front_end_gets_a_slider_and_a_dropdown_at_the_defaults(monkeypatch, no_env):
    import ipywidgets

    _fake_kernel(monkeypatch, True)
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)
    draw, calls = _recorder()
    live = widgets.interact_or_draw(draw, sparsity=[0.0, 0.5, 0.9], solver=["sparsegpt", "obc"])
    try:
        assert isinstance(live, ipywidgets.interactive)
        controls = {w.description: w for w in live.children if isinstance(w, ipywidgets.ValueWidget)}
        assert isinstance(controls["sparsity"], ipywidgets.SelectionSlider)
        assert isinstance(controls["solver"], ipywidgets.Dropdown)
        assert list(controls["sparsity"].options) == [0.0, 0.5, 0.9] and controls["sparsity"].value == 0.9
        assert controls["solver"].value == "obc"
        assert calls == [(0.9, "obc", 1)]  # drawn once at the defaults, like the static figure
        controls["sparsity"].value = 0.5
        assert calls[-1] == (0.5, "obc", 1)
    finally:
        live.close()


@pytest.mark.parametrize(
    "fn, controls, error, match",
    [
        (42, {"sparsity": [0.9]}, TypeError, "callable"),
        (None, {}, TypeError, "at least one control"),
        (None, {"nope": [1]}, TypeError, "'nope'"),
        (None, {"required": [1]}, TypeError, "'required'"),
        (None, {"sparsity": []}, ValueError, "no options"),
        (None, {"sparsity": [0.0, 0.5]}, ValueError, "default 0.9"),
        (None, {"solver": "obc"}, TypeError, "sequence"),
    ],
)
def test_bad_controls_are_refused_before_drawing(monkeypatch, no_env, fn, controls, error, match):
    _fake_kernel(monkeypatch, False)
    calls = []

    def draw(required, sparsity=0.9, solver="obc"):
        calls.append(1)

    with pytest.raises(error, match=match):
        widgets.interact_or_draw(draw if fn is None else fn, **controls)
    assert calls == []


def test_a_real_kernel_tells_a_headless_client_from_an_interactive_one(monkeypatch, no_env):
    """(~1.5 s) One real ipykernel, two execute requests that differ only in allow_stdin: nbclient (papermill,
    nbconvert --execute) sends False, JupyterLab/Notebook/VS Code send True."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        seen = {}
        for allow_stdin in (False, True):
            out = []

            def hook(msg, out=out):
                if msg["msg_type"] == "stream":
                    out.append(msg["content"]["text"])

            reply = kc.execute_interactive(
                "from spade_utils.widgets import frontend_attached\nprint(frontend_attached())",
                allow_stdin=allow_stdin,
                output_hook=hook,
                timeout=60,
            )
            assert reply["content"]["status"] == "ok"
            seen[allow_stdin] = "".join(out).strip()
        assert seen == {False: "False", True: "True"}
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_progress_bar_is_never_a_widget_headless(monkeypatch, no_env):
    import io

    from tqdm.notebook import tqdm as notebook_tqdm

    _no_widgets_allowed(monkeypatch)
    _fake_kernel(monkeypatch, False)  # papermill / nbconvert: no bar at all, so no comm and no stderr block
    out = io.StringIO()
    bar = widgets.progress_bar(range(3), file=out)
    assert not isinstance(bar, notebook_tqdm) and bar.disable and list(bar) == [0, 1, 2]
    assert out.getvalue() == ""

    monkeypatch.setattr(widgets, "_shell", lambda: None)  # a script: tqdm's text bar
    bar = widgets.progress_bar(range(3), file=out, desc="work")
    assert not bar.disable and list(bar) == [0, 1, 2]
    assert "work" in out.getvalue()


def test_progress_bar_is_the_notebook_bar_with_a_front_end(monkeypatch, no_env):
    from tqdm.notebook import tqdm as notebook_tqdm

    _fake_kernel(monkeypatch, True)
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)
    bar = widgets.progress_bar(range(2))
    try:
        assert isinstance(bar, notebook_tqdm) and list(bar) == [0, 1]
    finally:
        bar.close()
