"""jupyter_mlflow_k8s: run notebook cells as tracked jobs, locally or on Kubernetes.

Only entry points live here; importing the package is cheap (no MLflow, no Kubernetes).
MLflow is imported by the first ``%%train`` (about a second), in the foreground: importing it
from a background thread while the notebook imports other packages can deadlock Python's
import locks and leave half-initialized modules behind.
"""

from __future__ import annotations

from typing import Any

from .version import __version__

__all__ = ["__version__", "load_ipython_extension", "output", "train_form", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_mlflow_k8s``: register the magics.

    ``%%train`` and ``%%train_form``, ``%jobs`` and ``%job``; ``%runs``; ``%models`` and ``%model``;
    ``%pipeline``; ``%serve`` and ``%predict``; ``%batch_predict``; ``%trigger``.
    """
    from .magics import JobMagics, PipelineMagics, RegistryMagics, RunsMagics, TrainMagics
    from .magics.batch import BatchMagics
    from .magics.launcher import LauncherMagics
    from .magics.serving import ServingMagics
    from .magics.trigger import TriggerMagics

    ipython.register_magics(TrainMagics)
    ipython.register_magics(JobMagics)
    ipython.register_magics(RunsMagics)
    ipython.register_magics(RegistryMagics)
    ipython.register_magics(PipelineMagics)
    ipython.register_magics(ServingMagics)
    ipython.register_magics(LauncherMagics)
    ipython.register_magics(TriggerMagics)
    ipython.register_magics(BatchMagics)
    from .magics.completion import register

    register(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Take the magics' completions away (IPython unregisters nothing else)."""
    from .magics.completion import unregister

    unregister(ipython)


def output(name: str, value: Any) -> None:
    """Publish a step output for the later steps of a pipeline run: ``jupyter_mlflow_k8s.output("auc", 0.91)``.

    See :func:`jupyter_mlflow_k8s.pipelines.outputs.output`; imported on first use, so that
    ``%load_ext`` stays light.
    """
    from .pipelines.outputs import output as publish

    publish(name, value)


def train_form(cell: str) -> Any:
    """Show the launch form of ``%%train_form`` for the code ``cell`` (a ``%%train`` line on top pre-fills it).

    ``jupyter_mlflow_k8s.train_form("model = fit(X_train, y_train)")``: pick resources, see what the
    cell ships, run it as a job. Returns the form. See :func:`jupyter_mlflow_k8s.magics.launcher.show_train_form`.
    """
    from IPython import get_ipython

    from .magics.launcher import show_train_form

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("train_form() needs IPython (a notebook or an IPython terminal).")
    return show_train_form(shell, cell)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the built sidebar is, for ``jupyter labextension develop`` (wheels install it into share/)."""
    return [{"src": "labextension", "dest": "jupyter-mlflow-k8s"}]

