"""The exercise checks (spade_utils.exercises): each passes the model solution, fails deliberately wrong
implementations naming the mistake, refuses a non-callable; the model solutions agree with independent
oracles; and every exercise notebook runs headless with the solutions injected (and stops at the first stub
without them)."""

import importlib.util
import itertools
import math
from pathlib import Path

import pytest
import torch
from notebook_runner import execute

from spade_utils import exercises as E
from spade_utils.bruteforce import best_loss_per_count
from spade_utils.solvers import _obc_rows

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "exercises"
NOTEBOOKS = sorted(EXERCISES.glob("[0-9]*_exercises.ipynb"))


def _load_solutions():
    spec = importlib.util.spec_from_file_location("exercise_solutions", EXERCISES / "solutions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _load_solutions()


# --------------------------------------------------------------------------------------------------
# deliberately wrong implementations, each with a fragment of the message it must produce
# --------------------------------------------------------------------------------------------------
def _flat(x):
    return x.reshape(-1, x.shape[-1])


def _magnitude_with(scores_of, W, sparsity, k=None):
    k = round(sparsity * W.numel()) if k is None else k
    out = W.clone()
    out.reshape(-1)[scores_of(W).reshape(-1).argsort()[:k]] = 0.0
    return out


def _per_row(W, sparsity):
    return torch.stack([S.magnitude_prune(row.unsqueeze(0), sparsity)[0] for row in W])


def _threshold(W, sparsity):
    k = round(sparsity * W.numel())
    if k == 0:
        return W.clone()
    t = W.abs().reshape(-1).sort().values[k - 1]
    return torch.where(W.abs() <= t, torch.zeros_like(W), W)


def _in_place(W, sparsity):
    k = round(sparsity * W.numel())
    W.reshape(-1)[W.abs().reshape(-1).argsort()[:k]] = 0.0
    return W


def _obs_no_square(w, H_inv, pruned):
    d = torch.diagonal(H_inv)
    j = int(torch.where(pruned, math.inf, w.abs() / d).argmin())
    w_new = w - w[j] / d[j] * H_inv[:, j]
    w_new[j] = 0.0
    return j, w_new, float(w[j] ** 2 / (2 * d[j]))


def _obs_ignores_pruned(w, H_inv, pruned):
    return S.obs_step(w, H_inv, torch.zeros_like(pruned))


def _obs_modified(w, H_inv, pruned, *, sign=1.0, divide=True, half=True):
    j, _, _ = S.obs_step(w, H_inv, pruned)
    coef = w[j] / H_inv[j, j] if divide else w[j]
    w_new = w - sign * coef * H_inv[:, j]
    w_new[j] = 0.0
    w_new[pruned] = 0.0
    loss = float(w[j] ** 2 / H_inv[j, j]) / (2 if half else 1)
    return j, w_new, loss


def _auc_ties(tie):
    def fn(s, m):
        a, b = s[m].unsqueeze(1), s[~m].unsqueeze(0)
        return float(((a > b).double() + tie * (a == b).double()).mean())

    return fn


def _pointing_first(s, m):
    return float(m.reshape(-1)[int(s.reshape(-1).argmax())])


def _jitter_uniform(sample, n, std, generator):
    return sample + std * math.sqrt(3) * (2 * torch.rand(n, 2, generator=generator) - 1)


def _downdate_delete(H_inv, j):
    keep = [i for i in range(H_inv.shape[0]) if i != j]
    return S.hinv_downdate(H_inv, j)[keep][:, keep]


def _downdate_zero_only(H_inv, j):
    out = H_inv.clone()
    out[j, :] = 0.0
    out[:, j] = 0.0
    return out


WRONG = {
    "jitter": [
        ("variance", lambda s, n, std, g: S.jitter(s, n, std**2, g), "not a variance"),
        ("one noise for both", lambda s, n, std, g: s + std * torch.randn(n, 1, generator=g), "correlated"),
        ("uniform noise", _jitter_uniform, "torch.randn"),
        ("global RNG", lambda s, n, std, g: s + std * torch.randn(n, 2), "global RNG"),
        ("sample not added", lambda s, n, std, g: std * torch.randn(n, 2, generator=g), "centred on 0"),
    ],
    "gram": [
        ("1/n", lambda x: S.gram(x) / 2, "1/n instead of 2/n"),
        ("no normalisation", lambda x: _flat(x).T @ _flat(x), "no normalisation"),
        ("first dimension", lambda x: 2.0 / x.shape[0] * _flat(x).T @ _flat(x), "first dimension"),
        ("not flattened", lambda x: 2.0 / x.shape[-2] * x.transpose(-1, -2) @ x, "flatten the leading"),
        ("X X^T", lambda x: 2.0 / _flat(x).shape[0] * _flat(x) @ _flat(x).T, "X X^T over positions"),
        ("centred", lambda x: S.gram(_flat(x) - _flat(x).mean(0)), "subtracted the mean"),
        ("divided by 3", lambda x: S.gram(x) / 3, "0.3333 times the reference"),
    ],
    "reconstruction_loss": [
        ("no 1/2", lambda W, Ws, H: 2 * S.reconstruction_loss(W, Ws, H), "1/2 is missing"),
        ("sign", lambda W, Ws, H: -S.reconstruction_loss(W, Ws, H), "wrong sign"),
        ("Frobenius", lambda W, Ws, H: float(((W - Ws) ** 2).sum()), "H is ignored"),
        (
            "diagonal",
            lambda W, Ws, H: float((((W - Ws) ** 2) * torch.diagonal(H)).sum() / 2),
            "diagonal of H",
        ),
    ],
    "magnitude_prune": [
        ("floor", lambda W, s: _magnitude_with(torch.abs, W, s, k=math.floor(s * W.numel())), "floor"),
        ("largest", lambda W, s: _magnitude_with(lambda t: -t.abs(), W, s), "largest"),
        ("signed", lambda W, s: _magnitude_with(lambda t: t, W, s), "signed value"),
        ("per row", _per_row, "row by row"),
        ("threshold with ties", _threshold, "threshold"),
        ("rescaled", lambda W, s: 2 * S.magnitude_prune(W, s), "changed value"),
        ("in place", _in_place, "in place"),
    ],
    "obs_step": [
        ("no square", _obs_no_square, "lacks the square"),
        ("pruned chosen", _obs_ignores_pruned, "already pruned"),
        ("update sign", lambda w, H, p: _obs_modified(w, H, p, sign=-1.0), "wrong sign of the update"),
        ("no division", lambda w, H, p: _obs_modified(w, H, p, divide=False), "not divided by"),
        ("missing 1/2", lambda w, H, p: _obs_modified(w, H, p, half=False), "1/2 is missing"),
        ("tuple", lambda w, H, p: list(S.obs_step(w, H, p))[:2], "return a tuple"),
    ],
    "hinv_downdate": [
        ("plus", lambda H, j: H + torch.outer(H[:, j], H[j, :]) / H[j, j], "wrong sign"),
        ("no division", lambda H, j: H - torch.outer(H[:, j], H[j, :]), "not divided"),
        ("zeroed only", _downdate_zero_only, "only zeroed"),
        ("deleted", _downdate_delete, "keep H_inv d x d"),
    ],
    "trojan_auc": [
        ("ties count 0", _auc_ties(0.0), "ties must count one half"),
        ("ties count 1", _auc_ties(1.0), "ties must count one half"),
        ("inverted mask", lambda s, m: S.trojan_auc(s, ~m), "1 - expected"),
        ("negated map", lambda s, m: S.trojan_auc(-s, m), "1 - expected"),
        ("absolute", lambda s, m: S.trojan_auc(s.abs(), m), "|saliency|"),
        ("not a number", lambda s, m: "0.5", "must be a number"),
    ],
    "pointing_game": [
        ("first argmax", _pointing_first, "share of them on the trigger"),
        ("absolute", lambda s, m: S.pointing_game(s.abs(), m), "|saliency|"),
        ("inverted mask", lambda s, m: S.pointing_game(s, ~m), "inverted"),
    ],
    "best_trojan_auc": [
        ("signed only", S.trojan_auc, "only the signed"),
        ("absolute only", lambda s, m: S.trojan_auc(s.abs(), m), "only |saliency|"),
        ("smaller", lambda s, m: min(S.trojan_auc(s, m), S.trojan_auc(s.abs(), m)), "smaller"),
        ("negation", lambda s, m: max(S.trojan_auc(s, m), 1 - S.trojan_auc(s, m)), "negation"),
    ],
}
WRONG_CASES = [(name, label, fn, fragment) for name, rows in WRONG.items() for label, fn, fragment in rows]


def test_every_check_has_a_solution_and_wrong_implementations():
    assert set(E.CHECKS) == set(WRONG)
    assert all(len(rows) >= 2 for rows in WRONG.values())
    assert all(callable(getattr(S, name)) for name in E.CHECKS)


@pytest.mark.parametrize("name", list(E.CHECKS))
def test_check_passes_the_model_solution(name):
    assert E.CHECKS[name](getattr(S, name)) is None


@pytest.mark.parametrize(
    "name,label,fn,fragment", WRONG_CASES, ids=[f"{n}-{label}" for n, label, _, _ in WRONG_CASES]
)
def test_check_names_the_mistake(name, label, fn, fragment):
    with pytest.raises(AssertionError) as info:
        E.CHECKS[name](fn)
    assert fragment in str(info.value), str(info.value)
    assert E.CHECKS[name].__name__ in str(info.value)


@pytest.mark.parametrize("name", list(E.CHECKS))
def test_check_refuses_a_non_callable_and_lets_a_stub_raise(name):
    with pytest.raises(TypeError, match="fn must be your function"):
        E.CHECKS[name](42)

    def stub(*args):
        raise NotImplementedError("your code here")

    with pytest.raises(NotImplementedError):
        E.CHECKS[name](stub)


@pytest.mark.parametrize("name", ["gram", "magnitude_prune", "hinv_downdate"])
def test_check_reports_a_wrong_return_type_or_shape(name):
    with pytest.raises(AssertionError, match="must be a torch.Tensor"):
        E.CHECKS[name](lambda *args: [[0.0]])
    with pytest.raises(AssertionError, match="must have shape"):
        E.CHECKS[name](lambda *args: torch.zeros(7, 1))


def test_the_library_functions_pass_their_checks():
    """The library's own implementations, wrapped to the exercise signatures, pass too."""
    from spade_utils import metrics, solvers, toy

    E.check_jitter(lambda sample, n, std, g: toy.jitter(sample, n, g, std=std))
    E.check_magnitude_prune(lambda W, sparsity: solvers.magnitude_prune(W, None, sparsity))
    E.check_reconstruction_loss(solvers.reconstruction_loss)
    E.check_trojan_auc(lambda s, m: metrics.trojan_auc(s, m, mode="signed"))
    E.check_best_trojan_auc(metrics.trojan_auc)
    E.check_pointing_game(metrics.pointing_game)


# --------------------------------------------------------------------------------------------------
# the model solutions against oracles independent of the checks' references
# --------------------------------------------------------------------------------------------------
def test_gram_solution_equals_a_loop_over_positions():
    x = torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    vectors = list(x.reshape(-1, 4))
    loop = sum(torch.outer(v, v) for v in vectors) * 2 / len(vectors)
    torch.testing.assert_close(S.gram(x), loop)


def test_obs_step_solution_matches_brute_force_and_the_engine():
    """First removal: its loss is the brute-force least loss of one zero, and the engine's OBC row step
    removes the same weight with the same compensation."""
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        X = torch.randn(6, 20, dtype=torch.float64, generator=g)
        H = 2 / 20 * X @ X.T + 0.05 * torch.eye(6, dtype=torch.float64)
        w = torch.randn(6, dtype=torch.float64, generator=g)
        j, w_new, loss = S.obs_step(w, torch.linalg.inv(H), torch.zeros(6, dtype=torch.bool))
        assert math.isclose(loss, float(best_loss_per_count(w, H)[1]), rel_tol=1e-9)
        # the refit of the remaining weights is optimal: the loss of w_new equals the increase
        dw = w - w_new
        assert math.isclose(float(dw @ H @ dw) / 2, loss, rel_tol=1e-9)
        engine_w, inc = _obc_rows(
            w.unsqueeze(0),
            torch.linalg.inv(H).unsqueeze(0),
            torch.zeros(1, 6, dtype=torch.bool),
            torch.tensor([1]),
        )
        torch.testing.assert_close(engine_w[0], w_new)
        assert math.isclose(float(inc[0, 0]), loss, rel_tol=1e-9)


def test_greedy_obs_from_the_solutions_tracks_brute_force():
    """Repeated obs_step + hinv_downdate is greedy OBS: each step's loss adds up to the loss of the final
    weights, and one removal is always optimal."""
    g = torch.Generator().manual_seed(2)
    X = torch.randn(5, 15, dtype=torch.float64, generator=g)
    H = 2 / 15 * X @ X.T + 0.05 * torch.eye(5, dtype=torch.float64)
    w0 = torch.randn(5, dtype=torch.float64, generator=g)
    w, H_inv, pruned, total = w0, torch.linalg.inv(H), torch.zeros(5, dtype=torch.bool), 0.0
    best = best_loss_per_count(w0, H)
    for c in range(1, 4):
        j, w, loss = S.obs_step(w, H_inv, pruned)
        H_inv, total = S.hinv_downdate(H_inv, j), total + loss
        pruned[j] = True
        dw = w0 - w
        assert math.isclose(float(dw @ H @ dw) / 2, total, rel_tol=1e-8)
        assert total >= float(best[c]) * (1 - 1e-9)


def test_auc_and_pointing_solutions_equal_pair_counts():
    g = torch.Generator().manual_seed(3)
    s = torch.randint(0, 4, (6, 6), generator=g).double()
    m = torch.zeros(6, 6, dtype=torch.bool)
    m[1:3, 2:5] = True
    pairs = [(a, b) for a, b in itertools.product(s[m].tolist(), s[~m].tolist())]
    want = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert math.isclose(S.trojan_auc(s, m), want, rel_tol=1e-12)
    top = [(i, j) for i in range(6) for j in range(6) if s[i, j] == s.max()]
    assert math.isclose(S.pointing_game(s, m), sum(bool(m[i, j]) for i, j in top) / len(top))


# --------------------------------------------------------------------------------------------------
# the exercise notebooks
# --------------------------------------------------------------------------------------------------
def _run_notebook(path, out, solutions):
    return execute(
        path, out, {"SOLUTIONS": solutions}, cell_timeout=300
    )  # cwd: exercises/, the notebook's folder


def test_there_are_three_exercise_notebooks_with_paired_sources():
    import jupytext

    assert [p.stem for p in NOTEBOOKS] == [
        "01_toy_exercises",
        "02_solvers_exercises",
        "04_backdoor_exercises",
    ]
    for nb in NOTEBOOKS:
        py = nb.with_suffix(".py")
        cells = [(c.cell_type, c.source.strip()) for c in jupytext.read(nb).cells if c.source.strip()]
        assert cells == [
            (c.cell_type, c.source.strip()) for c in jupytext.read(py).cells if c.source.strip()
        ], f"{nb.name} and {py.name} differ: run `jupytext --to ipynb {py.name}`"
        checks = [c.source for c in jupytext.read(py).cells if "exercises.check_" in c.source]
        stubs = [
            c.source
            for c in jupytext.read(py).cells
            if c.cell_type == "code" and "raise NotImplementedError" in c.source
        ]
        assert 3 <= len(checks) <= 5 and len(stubs) == len(checks), nb.name


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_exercise_notebook_runs_with_the_solutions(notebook, tmp_path, monkeypatch):
    monkeypatch.setenv("SPADE_HEADLESS", "1")
    nb = _run_notebook(notebook, tmp_path / notebook.name, True)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    n_checks = sum("exercises.check_" in c.source for c in nb.cells)
    assert printed.count("passed") >= n_checks


def test_exercise_notebook_stops_at_the_first_stub_without_solutions(tmp_path, monkeypatch):
    import papermill

    monkeypatch.setenv("SPADE_HEADLESS", "1")
    notebook = EXERCISES / "04_backdoor_exercises.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as info:
        _run_notebook(notebook, tmp_path / notebook.name, False)
    assert info.value.ename == "NotImplementedError"
