"""``%%train``: run a cell as a job and bring its results back."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from ..backends.base import backends
from ..exceptions import JMKUsageError, UnknownPlugin
from ..jobs import JobService, RegistrationFailed
from ..k8s.presets import parse_secret, parse_volume
from ..k8s.validation import check_quantity
from ..models import JobRecord, JobSpec, Resources, parse_gpus, parse_nodes, parse_procs, parse_retries
from ..payload import analyze_cell
from ..sweeps import SweepRequest, SweepService
from ..tracking import run_url
from ..widgets import JobStatusView
from ..widgets.sweep import SweepView
from .common import (
    literal,
    notebook_path,
    parse_duration,
    parse_flags,
    parse_pairs,
    service_for,
    stream_to_cell,
    user_errors,
)

_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


class JobHandle:
    """What ``%%train --async`` returns: the job, to wait for, collect, or cancel later."""

    def __init__(self, service: JobService, job_id: str, shell: Any) -> None:
        self._service = service
        self._shell = shell
        self.job_id = job_id

    @property
    def record(self) -> JobRecord:
        """The job's current record."""
        return self._service.get(self.job_id)

    @property
    def state(self) -> str:
        """queued, running, succeeded, failed or cancelled."""
        return self.record.state.value

    def cancel(self) -> None:
        """Ask the job to stop."""
        self._service.cancel(self.job_id)

    def result(self) -> Any:
        """Wait for the job, stream the rest of its log, put its results in the namespace.

        Returns the value of the cell's final expression, if it had one.
        """
        result = attach(self._shell, self._service, self.job_id)
        return result.display if result.has_display else None

    def __repr__(self) -> str:
        return f"<JobHandle {self.job_id}: {self.state}; %job attach {self.job_id} to collect>"


def attach(shell: Any, service: JobService, job_id: str, view: JobStatusView | None = None) -> Any:
    """Follow a job to its end, then put what it returned into the user namespace."""
    __tracebackhide__ = True  # IPython leaves this frame out of tracebacks
    record = stream_to_cell(service, job_id, view)
    for note in record.notes:
        print(f"[jmk] job {record.job_id}: {note}")
    try:
        result = service.result(record)
    except RegistrationFailed as failure:
        if failure.result is not None:  # the trained model is not lost: it is in the namespace
            shell.user_ns.update(failure.result.values)
            print(f"[jmk] job {record.job_id} returned {', '.join(failure.result.values) or 'nothing'}")
        raise
    shell.user_ns.update(result.values)
    names = ", ".join(result.values) or "nothing"
    print(f"[jmk] job {record.job_id} {record.state.value} in {record.elapsed:.2f} s; returned {names}")
    for name, why in result.skipped.items():
        print(f"[jmk] {name} was not returned: {why}")
    if result.registered:
        reg = result.registered
        print(f"[jmk] registered {reg['variable']} as models:/{reg['name']}/{reg['version']} ({reg['flavor']})")
    return result


_SWEEP_FLAGS = ("objective", "search", "trials", "parallel", "repeats", "prune", "max_failures", "seed")


def _refuse_sweep_flags(args: Any) -> None:
    """A sweep's flags without ``--sweep`` would be ignored silently: say so instead."""
    given = [f"--{name.replace('_', '-')}" for name in _SWEEP_FLAGS if getattr(args, name) is not None]
    if given:
        raise JMKUsageError(
            f"{', '.join(given)} only make sense with --sweep, "
            "e.g. --sweep \"lr=[0.01, 0.1]\" --objective val_loss:min."
        )


def sweeps_for(shell: Any) -> SweepService:
    """One sweep service per shell, on the shell's job service."""
    sweeps = getattr(shell, "_jmk_sweeps", None)
    if sweeps is None:
        sweeps = SweepService(service_for(shell), shell.config)
        shell._jmk_sweeps = sweeps
    return sweeps


class SweepHandle:
    """What ``%%train --sweep --async`` returns: the sweep, to wait for, collect, or cancel later."""

    def __init__(self, sweeps: SweepService, sweep_id: str, shell: Any) -> None:
        self._sweeps = sweeps
        self._shell = shell
        self.sweep_id = sweep_id

    @property
    def record(self) -> dict[str, Any]:
        """The sweep's current record."""
        return self._sweeps.get(self.sweep_id)

    @property
    def state(self) -> str:
        """queued, running, succeeded, failed or cancelled."""
        return str(self.record["state"])

    @property
    def trials(self) -> Any:
        """Every trial so far, as a DataFrame."""
        return self._sweeps.frame(self.record)

    def cancel(self) -> None:
        """Stop every trial and wait until the sweep has ended."""
        self._sweeps.cancel(self.sweep_id)

    def result(self) -> None:
        """Wait for the sweep, then put the best trial's names and ``sweep`` into the namespace."""
        collect_sweep(self._shell, self._sweeps, self.sweep_id)

    def __repr__(self) -> str:
        return f"<SweepHandle {self.sweep_id}: {self.state}; %job attach {self.sweep_id} to collect>"


def collect_sweep(shell: Any, sweeps: SweepService, sweep_id: str, view: SweepView | None = None) -> None:
    """Follow a sweep to its end; ``sweep`` gets every trial, the namespace the best trial's names."""
    __tracebackhide__ = True  # IPython leaves this frame out of tracebacks
    if view is None:
        view = SweepView(sweeps.get(sweep_id))
        view.show()
    record = sweeps.follow(sweep_id, view.update)
    view.update(record)
    shell.user_ns["sweep"] = sweeps.frame(record)
    trial, result = sweeps.best_result(record)
    shell.user_ns.update(result.values)
    params = ", ".join(f"{k}={v!r}" for k, v in trial["params"].items())
    metric = record["objective"]["metric"]
    names = ", ".join(result.values) or "nothing"
    print(f"[jmk] sweep {record['sweep_id']} {record['state']}: best trial {trial['index']} ({params}) "
          f"{metric}={trial['objective']:.6g}, MLflow run {trial['run_id']}; returned {names}; "
          "`sweep` holds every trial")  # fmt: skip
    if record.get("message"):
        print(f"[jmk] {record['message']}")


@magics_class
class TrainMagics(Magics):
    """The ``%%train`` cell magic."""

    @magic_arguments()
    @argument("--backend", help="where to run: local (default) or kubernetes")
    @argument("--gpus", default="0", help="number of GPUs, e.g. --gpus 1")
    @argument("--cpu", help="CPU cores, e.g. --cpu 4 or --cpu 500m")
    @argument("--memory", help="memory, e.g. --memory 16Gi")
    @argument("--image", help="container image (Kubernetes); default: the configured one")
    @argument("--env", action="append", metavar="K=V", help="environment variable for the job (repeatable)")
    @argument("--param", action="append", metavar="K=V", help="a variable for the cell, an MLflow param (repeatable)")
    @argument("--tag", action="append", metavar="K=V", help="an MLflow tag for the run (repeatable)")
    @argument("--experiment", help="MLflow experiment; default: the notebook's name")
    @argument("--run-name", help="MLflow run name")
    @argument("--out", help="comma-separated names to bring back; default: every name the cell assigns")
    @argument("--no-out", action="store_true", help="bring no names back")
    @argument("--timeout", help="stop the job after this long: 900, 15m, 2h")
    @argument("--register", metavar="NAME", help="log the cell's model and register a version of NAME")
    @argument("--model", metavar="VAR", help="with --register: the variable holding the model (default: the one model)")
    @argument("--input-example", metavar="VAR", help="with --register: data for the signature and drift baseline")
    @argument("--async", dest="run_async", action="store_true", help="return at once with a job handle")
    @argument("--preset", help="Kubernetes: named pod settings from c.KubernetesBackend.presets, e.g. --preset a100")
    @argument("--secret", action="append", metavar="NAME", help="Kubernetes: a Secret as environment (repeatable)")
    @argument("--volume", action="append", metavar="pvc:CLAIM:/path[:ro]", help="Kubernetes: mount a PVC (repeatable)")
    @argument("--retries", default="0", help="Kubernetes: run the cell again this many times if it fails")
    @argument("--nodes", default="1", help="train on this many pods under torchrun (Kubernetes), e.g. --nodes 2")
    @argument("--procs", help="processes per pod (or on this machine) under torchrun; default: one per GPU, else 1")
    @argument("--rendezvous-timeout", default="15m", help="with --nodes: how long the pods wait for each other")
    @argument("--sweep", metavar="SPACE", help='sweep hyperparameters: "lr=loguniform(1e-4,1e-1); batch=[32,64]"')
    @argument("--objective", metavar="METRIC:min|max", help="with --sweep: what the trials are ranked by")
    @argument("--search", help="with --sweep: grid (default for lists), random (default otherwise) or tpe (Optuna)")
    @argument("--trials", help="with --sweep: how many trials (random, tpe; a grid runs every point)")
    @argument("--parallel", help="with --sweep: at most this many trials at once (default 1)")
    @argument("--repeats", help="with --sweep: run each point this many times (grouped in the results)")
    @argument("--prune", nargs="?", const="median", help="with --sweep: stop poor trials early (median or halving)")
    @argument("--max-failures", help="with --sweep: stop after more failed trials than this (default: a quarter)")
    @argument("--seed", help="with --sweep: seed of the random and tpe searches")
    @cell_magic
    @user_errors
    def train(self, line: str, cell: str) -> Any:
        """Run this cell as a job: local process or Kubernetes Job, tracked in MLflow.

        The cell's free variables (names it reads that earlier cells defined) are sent to the
        job; the names it assigns come back; its output streams into the cell as it runs; an
        exception in the job is raised here with the job id and the remote traceback. Every
        job is an MLflow run: ``mlflow.log_metric(...)`` inside the cell logs to it.
        Interrupting the kernel while waiting cancels the job.

        Examples
        --------
        Train on one GPU and bring ``model`` and ``losses`` back::

            %%train --gpus 1 --memory 16Gi --experiment mnist
            model = Net().to("cuda")
            losses = fit(model, train_loader, epochs=epochs)

        Parameters become variables in the cell and MLflow params::

            %%train --param lr=0.01 --param epochs=5 --out model
            model = fit(lr=lr, epochs=epochs)

        Register the trained model (torch, scikit-learn, or anything with ``predict``), with a
        signature and a drift baseline from an input example::

            %%train --register churn-clf --input-example X_sample
            clf = GradientBoostingClassifier().fit(X_train, y_train)

        Train on 2 pods with 4 GPUs each, one process per GPU (8 ranks under torchrun, DDP on nccl);
        the names rank 0 assigns come back::

            %%train --backend kubernetes --nodes 2 --gpus 4
            import torch.distributed as dist
            dist.init_process_group()
            model = fit_ddp(model, data)

        Sweep hyperparameters: each trial a job (4 at once), each an MLflow run under one parent; the
        best trial's names come back, ``sweep`` holds every trial (see docs/sweeps.md)::

            %%train --sweep "lr=loguniform(1e-4,1e-1); batch=[32,64]" --objective val_loss:min --trials 20 --parallel 4
            model, val_loss = fit(lr=lr, batch=batch)

        Fire and forget, collect later (also after a kernel restart)::

            %%train --async --timeout 2h
            result = long_experiment()

            %jobs
            %job attach 1a2b3c4d
        """
        __tracebackhide__ = True  # IPython leaves this frame out of tracebacks
        assert self.shell is not None
        plan = plan_train(self.shell, line, cell)
        if plan.sweep is not None:
            return self._sweep(plan)
        args, spec = plan.args, plan.spec
        service = service_for(self.shell)
        values = {name: self.shell.user_ns[name] for name in spec.inputs}
        record = service.submit(spec, values)
        print(f"[jmk] job {record.job_id} submitted ({spec.backend}); MLflow: {run_url(record)}")
        if args.run_async:
            view = JobStatusView(record, on_cancel=lambda: service.cancel(record.job_id))
            view.show()
            view.follow_in_background(lambda: service.get(record.job_id))
            return JobHandle(service, record.job_id, self.shell)
        view = JobStatusView(record)
        view.show()
        result = attach(self.shell, service, record.job_id, view)
        return result.display if result.has_display else None

    def _sweep(self, plan: TrainPlan) -> Any:
        """``--sweep``: every trial a job; the best trial's names come back, ``sweep`` holds them all."""
        __tracebackhide__ = True  # IPython leaves this frame out of tracebacks
        assert self.shell is not None and plan.sweep is not None
        args, spec, request = plan.args, plan.spec, plan.sweep
        sweeps = sweeps_for(self.shell)
        values = {name: self.shell.user_ns[name] for name in spec.inputs}
        record = sweeps.start(spec, values, request)
        sweep_id = record["sweep_id"]
        at_once = f"at most {request.parallel} at once"
        print(f"[jmk] sweep {sweep_id}: {request.trials} trials ({request.search}), {at_once}, {spec.backend}; "
              f"objective {request.objective}; parent MLflow run {record['parent_run_id']}")  # fmt: skip
        note = sweeps.parallel_note(spec, request)
        if note:
            print(f"[jmk] note: {note}")
        view = SweepView(record, on_cancel=(lambda: sweeps.store.request_cancel(sweep_id)) if args.run_async else None)
        view.show()
        if args.run_async:
            threading.Thread(target=sweeps.follow, args=(sweep_id, view.update), daemon=True).start()
            return SweepHandle(sweeps, sweep_id, self.shell)
        collect_sweep(self.shell, sweeps, sweep_id, view)
        return None

    def _spec(self, args: Any, cell: str, swept: tuple[str, ...] = ()) -> JobSpec:
        """Validate every flag and the cell; build the job spec (nothing submitted yet): :func:`build_spec`."""
        assert self.shell is not None
        return build_spec(self.shell, args, cell, swept)


# ---------------------------------------------------------------------------- the checks before submitting


@dataclasses.dataclass(frozen=True)
class TrainPlan:
    """What ``%%train LINE`` would submit: its flags, the job spec and, with ``--sweep``, the sweep."""

    args: Any
    spec: JobSpec
    sweep: SweepRequest | None = None


def plan_train(shell: Any, line: str, cell: str) -> TrainPlan:
    """Every check ``%%train LINE`` makes before it submits anything, in the order it makes them.

    The magic and the launch forms (:mod:`.launcher`) both call this, so a form can neither accept
    a line the magic refuses nor refuse one it accepts. Nothing is staged or submitted.

    Raises:
        JMKUsageError: A flag or the cell is wrong; the message says what to type instead.
        UsageError: IPython's own refusal of an unknown flag or a missing value.
    """
    args = parse_flags(TrainMagics.train, line)
    if args.sweep is None:
        _refuse_sweep_flags(args)
        return TrainPlan(args, build_spec(shell, args, cell))
    request = SweepRequest.parse(
        args.sweep, args.objective, args.search, args.trials, args.parallel, args.repeats, args.prune,
        args.max_failures, args.seed,
    )  # fmt: skip
    if args.register:
        raise JMKUsageError(
            "--register with --sweep would register a model for every trial. Sweep first; then register "
            "the best trial's model (it comes back into the notebook) with %%train --register, or "
            "%model register on the best run (sweep.loc[sweep.best].run_id)."
        )
    spec = build_spec(shell, args, cell, swept=request.space.names)
    metric = request.objective.metric
    if metric in spec.assigns and metric not in spec.outputs:  # the objective may be a number the cell assigns
        spec = dataclasses.replace(spec, outputs=(*spec.outputs, metric))
    return TrainPlan(args, spec, request)


_QUANTITIES = {
    "--cpu": ("a CPU amount", "4, 0.5 or 500m (cores; m is a thousandth)"),
    "--memory": ("a memory size", "16Gi, 512Mi or 4 (bytes; Ki, Mi, Gi are powers of 1024)"),
}


def check_resources(cpu: str | None, memory: str | None) -> None:
    """``--cpu`` and ``--memory`` must be quantities Kubernetes reads, checked here for every backend.

    Kubernetes' own syntax (:func:`~jupyter_mlflow_k8s.k8s.validation.check_quantity`), so a value
    a local job would take is not refused by a cluster later; then positive (:class:`Resources`).
    """
    for flag, value in (("--cpu", cpu), ("--memory", memory)):
        if value is not None and check_quantity(value, flag):
            what, examples = _QUANTITIES[flag]
            negative = value.startswith("-") and not check_quantity(value[1:], flag)
            problem = "is negative" if negative else f"is not {what}"
            raise JMKUsageError(f"{flag} {value!r} {problem}: use e.g. {examples}. Nothing was submitted.")


def check_backend(name: str) -> None:
    """The backend must be one a registry knows (built-in or plugin), before anything is staged."""
    if name not in backends.names():
        raise UnknownPlugin("backend", name, backends.names())


def build_spec(shell: Any, args: Any, cell: str, swept: tuple[str, ...] = ()) -> JobSpec:
    """Validate every flag and the cell; build the job spec (nothing submitted yet)."""
    code = shell.transform_cell(cell)
    if "get_ipython()" in code and "get_ipython()" not in cell:
        raise JMKUsageError(
            "Magics (%...) and shell commands (!...) do not run inside a %%train job. "
            "Run them in a cell of their own before this one."
        )
    if not code.strip():
        raise JMKUsageError("The %%train cell is empty: put the code to run below the %%train line.")
    analysis = analyze_cell(code)
    params = {k: literal(v) for k, v in parse_pairs(args.param, "--param", identifiers=True).items()}
    if args.out and args.no_out:
        raise JMKUsageError("--out and --no-out contradict each other: use one.")
    outputs: tuple[str, ...] = analysis.assigns
    if args.no_out:
        outputs = ()
    elif args.out:
        outputs = tuple(n.strip() for n in args.out.split(",") if n.strip())
        missing = [n for n in outputs if n not in analysis.assigns]
        if missing:
            raise JMKUsageError(
                f"--out names {', '.join(missing)}, which the cell never assigns. "
                f"It assigns: {', '.join(analysis.assigns) or 'nothing'}."
            )
    inputs = analysis.inputs(shell.user_ns, exclude=[*params, *swept])
    inputs = _check_register(shell, args, analysis.assigns, inputs)
    check_resources(args.cpu, args.memory)
    service = service_for(shell)
    backend = args.backend or service.settings.default_backend
    check_backend(backend)
    gpus = parse_gpus(args.gpus)
    rendezvous = parse_duration(args.rendezvous_timeout, "--rendezvous-timeout")
    return JobSpec(
        code=code,
        inputs=inputs,
        outputs=outputs,
        resources=Resources(cpu=args.cpu, memory=args.memory, gpus=gpus),
        backend=backend,
        image=args.image,
        env=parse_pairs(args.env, "--env"),
        params=params,
        timeout=parse_duration(args.timeout),
        experiment=args.experiment,
        run_name=args.run_name,
        tags=parse_pairs(args.tag, "--tag"),
        notebook=notebook_path(shell),
        workdir=os.getcwd(),
        register=args.register,
        model_var=args.model,
        input_example=args.input_example,
        assigns=analysis.assigns,
        secrets=tuple(parse_secret(name) for name in args.secret or ()),
        volumes=tuple(text for text in args.volume or () if parse_volume(text)),  # checked now, kept as given
        preset=args.preset,
        retries=parse_retries(args.retries),
        nodes=parse_nodes(args.nodes),
        procs=parse_procs(args.procs, gpus),
        rendezvous_timeout=rendezvous or 0.0,
    )


def _check_register(shell: Any, args: Any, assigns: tuple[str, ...], inputs: tuple[str, ...]) -> tuple[str, ...]:
    """Validate --register/--model/--input-example; returns the inputs, the example added."""
    if not args.register:
        for flag, value in (("--model", args.model), ("--input-example", args.input_example)):
            if value:
                raise JMKUsageError(f"{flag} only makes sense with --register NAME.")
        return inputs
    if not _MODEL_NAME_RE.match(args.register):
        raise JMKUsageError(
            f"--register {args.register!r} is not a usable model name: use letters, digits, '-', '_' and '.', "
            "starting with a letter or digit (e.g. --register mnist-clf)."
        )
    if args.model and args.model not in assigns:
        raise JMKUsageError(
            f"--model {args.model}: the cell never assigns {args.model}. "
            f"It assigns: {', '.join(assigns) or 'nothing'}."
        )
    example = args.input_example
    if example and example not in assigns:
        if example not in shell.user_ns:
            raise JMKUsageError(
                f"--input-example {example}: no such variable in the notebook, and the cell does not assign it."
            )
        if example not in inputs:
            inputs = (*inputs, example)
    return inputs


__all__ = ["JobHandle", "SweepHandle", "TrainMagics", "TrainPlan", "UsageError", "attach", "build_spec",
           "check_resources", "collect_sweep", "plan_train", "sweeps_for"]
