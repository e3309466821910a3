"""Headless notebook runs for the tests, as `make figures` does them: papermill, a per-cell time limit, the
notebook's own folder as the working directory, no progress bar."""

from pathlib import Path


def execute(notebook, output, parameters: dict, *, cell_timeout: int):
    """Run ``notebook`` into ``output`` with ``parameters`` injected; returns the executed notebook. A cell over
    ``cell_timeout`` seconds or an exception fails the run (papermill's errors, naming the cell)."""
    import papermill

    return papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters=parameters,
        cwd=str(Path(notebook).parent),
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=cell_timeout,
    )
