"""``%runs``: the recent MLflow runs of an experiment, as a sortable table with metric plots.

Reads through the tracking facade (:mod:`jupyter_mlflow_k8s.tracking`), never MLflow's client.
"""

from __future__ import annotations

import difflib
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from .. import tracking
from ..errors import NotFoundError
from ..exceptions import JMKUsageError
from ..widgets.runs import RunsTable, RunSummary, runs_display
from .common import notebook_path, parse_flags, service_for, user_errors

DEFAULT_MAX_RUNS = 20


def unknown_experiment(tracking_uri: str, name: str) -> JMKUsageError:
    """The error for an experiment that does not exist, naming some that do."""
    known = [e.name for e in tracking.experiments(tracking_uri)]
    close = difflib.get_close_matches(name, known, n=3)
    recent = [n for n in known if n not in close][: 8 - len(close)]
    hint = f" Did you mean {', '.join(repr(n) for n in close)}?" if close else ""
    listed = ", ".join(repr(n) for n in [*close, *recent])
    more = f" ({len(known)} in all)" if len(known) > len(close) + len(recent) else ""
    return NotFoundError(
        f"No MLflow experiment {name!r}.{hint} Experiments: {listed or 'none yet'}{more}. "
        "Type %runs NAME with one of them, or %runs alone for the notebook's experiment."
    )


def find_experiment(tracking_uri: str, name: str) -> Any:
    """Experiment ``name`` (or id), active; a usage error naming known experiments otherwise."""
    experiment = tracking.experiment_by_name(tracking_uri, name)
    if experiment is None and name.isdigit():
        experiment = tracking.experiment_by_id(tracking_uri, name)
    if experiment is None:
        raise unknown_experiment(tracking_uri, name)
    if experiment.lifecycle_stage != "active":
        raise JMKUsageError(f"MLflow experiment {name!r} is deleted. Restore it in the MLflow UI to list its runs.")
    return experiment


@magics_class
class RunsMagics(Magics):
    """``%runs``."""

    @magic_arguments()
    @argument("experiment", nargs="?", help="MLflow experiment name (or id); default: the notebook's experiment")
    @argument("--max", type=int, default=DEFAULT_MAX_RUNS, metavar="N", help="how many recent runs (default 20)")
    @argument("--sort", metavar="COLUMN", help="sort by a column: start, duration, status, run, lr, metrics.loss, ...")
    @argument("--desc", action="store_true", help="sort descending (the default order is newest first)")
    @argument("--metric", metavar="NAME", help="plot this metric's history across the runs")
    @line_magic
    @user_errors
    def runs(self, line: str = "") -> Any:
        """The recent MLflow runs of an experiment: name, status, start, duration, params, latest metrics.

        The experiment is EXPERIMENT, else the notebook's (the one ``%%train`` records runs in
        when it is not given ``--experiment``) once it exists, else every experiment. The N
        most recent runs are listed, newest first unless ``--sort`` says otherwise; a column is
        ``start``, ``duration``, ``status``, ``run``, a param or a metric (``lr`` or
        ``params.lr``, ``loss`` or ``metrics.loss``). In a notebook the table comes with a
        sort menu, an ascending/descending toggle and a menu to plot one metric's history
        across the listed runs.

        Examples
        --------
        ::

            %runs
            %runs mnist --max 50
            %runs mnist --sort metrics.accuracy --desc
            %runs "my experiment" --sort lr --metric loss
        """
        __tracebackhide__ = True  # IPython leaves this frame out of tracebacks
        assert self.shell is not None
        args = parse_flags(self.runs, line)
        if args.max < 1:
            raise JMKUsageError(f"--max {args.max}: give the number of runs to list, such as --max 20.")
        uri = service_for(self.shell).settings.tracking_uri
        name = args.experiment.strip("\"'") if args.experiment else None
        experiments = self._experiments(uri, name)
        found = (
            tracking.search_runs(
                uri,
                [e.experiment_id for e in experiments],
                max_results=args.max,
                order_by=["attributes.start_time DESC"],
            )[0]
            if experiments
            else []
        )
        names = {e.experiment_id: e.name for e in experiments}
        runs = [RunSummary.from_run(run, names.get(run.info.experiment_id, run.info.experiment_id)) for run in found]
        where = f"experiment {experiments[0].name!r}" if len(experiments) == 1 else "all experiments"
        table = RunsTable(
            runs,
            sort=args.sort,
            descending=args.desc if args.sort or args.desc else None,
            metric=args.metric,
            history=lambda run_id, key: [(m.step, m.value) for m in tracking.metric_history(uri, run_id, key)],
            caption=f"{len(runs)} most recent run{'s' if len(runs) != 1 else ''} of {where}",
            empty_message=f"No runs in {where} yet. A %%train cell records one per job.",
        )
        return runs_display(table, self.shell)

    def _experiments(self, tracking_uri: str, name: str | None) -> list[Any]:
        """The experiment named, else the notebook's if it exists, else every active one."""
        if name:
            return [find_experiment(tracking_uri, name)]
        notebook = notebook_path(self.shell)
        if notebook:
            from ..models import JobSpec

            own_name = tracking.experiment_name(JobSpec(code="", notebook=notebook))
            own = tracking.experiment_by_name(tracking_uri, own_name)
            if own is not None and own.lifecycle_stage == "active":
                return [own]
        return tracking.experiments(tracking_uri)


__all__ = ["RunsMagics", "find_experiment"]
