"""What a sweep searches: the space of ``--sweep``, the ``--objective``, the ``--search`` and its trials' params.

Pure code: parsing, enumeration and sampling, plus :class:`OptunaSearch`, the ask/tell study behind
``--search tpe`` and ``--prune``. No MLflow, no IPython, no job records; the one file it touches is
the study's SQLite storage, whose path the sweep controller chooses. Optuna is optional and imported
only inside the functions that need it, so a grid or a random sweep runs without it.
"""

from __future__ import annotations

import ast
import itertools
import math
import random
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..exceptions import JMKUsageError
from ..util.names import is_identifier

# A grid or a range() above this many points is a mistake more often than a plan (and a tuple of it
# would fill the memory): such a sweep wants --search random|tpe with --trials.
GRID_LIMIT = 10_000
SEARCHES = ("grid", "random", "tpe")
PRUNERS = ("median", "halving")
TRIAL_STATES = ("complete", "pruned", "fail")

_KINDS = ("choice", "uniform", "loguniform", "int")
_CONTINUOUS = ("uniform", "loguniform")
_LITERAL_TYPES = (type(None), bool, int, float, str)
_EXAMPLE = '--sweep "lr=loguniform(1e-4, 1e-1); batch=[32, 64]; layers=range(1, 4)"'
_KNOWN_FORMS = (
    "Known forms: NAME=[v1, v2, ...] or NAME=choice(v1, v2, ...) (numbers, strings, True/False, None); "
    "NAME=range(stop) or range(start, stop[, step]) (whole numbers); NAME=uniform(low, high); "
    "NAME=loguniform(low, high) (0 < low < high); NAME=int(low, high) (whole numbers, both ends included). "
    f"Separate entries with ; or new lines, e.g. {_EXAMPLE}"
)
# MLflow's metric names: alphanumerics, underscores, dashes, periods, spaces and slashes.
_METRIC_RE = re.compile(r"^[A-Za-z0-9_\-./ ]+$")
_OPTUNA_MISSING = "--search tpe and --prune use Optuna: pip install 'jupyter_mlflow_k8s[sweep]' (optuna)"


@dataclass(frozen=True)
class Dimension:
    """One swept name and where its values come from.

    ``values`` holds a choice's values (``range()`` becomes a choice of ints); ``low`` and ``high``
    bound the other kinds, both ends included for ``int``.
    """

    name: str
    kind: str  # "choice", "uniform", "loguniform", "int"
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0

    @property
    def continuous(self) -> bool:
        """Whether the values are floats in an interval (a grid cannot enumerate them)."""
        return self.kind in _CONTINUOUS

    def describe(self) -> str:
        """The dimension as the user would write it: ``loguniform(0.0001, 0.1)``, ``[32, 64]``, ``int(1, 4)``."""
        if self.kind == "choice":
            return "[" + ", ".join(repr(value) for value in self.values) + "]"
        if self.kind == "int":
            return f"int({int(self.low)}, {int(self.high)})"
        return f"{self.kind}({float(self.low)!r}, {float(self.high)!r})"

    def size(self) -> int:
        """How many values a grid takes from this dimension; a continuous one refuses with the grid error."""
        if self.continuous:
            raise JMKUsageError(_grid_error([self]))
        if self.kind == "int":
            return int(self.high) - int(self.low) + 1
        return len(self.values)

    def grid_values(self) -> tuple[Any, ...]:
        """The values a grid goes through: a choice's values, or every int of ``int(low, high)``."""
        if self.size() > GRID_LIMIT:
            raise JMKUsageError(
                f"--search grid over {self.name}={self.describe()} would run {self.size()} values, more than "
                f"{GRID_LIMIT}: list fewer, or use --search random|tpe with --trials N."
            )
        if self.kind == "int":
            return tuple(range(int(self.low), int(self.high) + 1))
        return self.values

    def sample(self, rng: random.Random) -> Any:
        """One value drawn with ``rng``; loguniform is uniform in log space, so each decade is as likely."""
        if self.kind == "choice":
            return rng.choice(self.values)
        if self.kind == "int":
            return rng.randint(int(self.low), int(self.high))
        if self.kind == "uniform":
            value = rng.uniform(self.low, self.high)
        else:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return min(max(value, self.low), self.high)  # exp(log(x)) may round past a bound

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of this dimension (a fixed trial's params are checked with it)."""
        if self.kind == "choice":
            return any(_same_value(value, choice) for choice in self.values)
        allowed = int if self.kind == "int" else int | float
        if isinstance(value, bool) or not isinstance(value, allowed):
            return False
        return self.low <= value <= self.high

    def same(self, a: Any, b: Any) -> bool:
        """Whether ``a`` and ``b`` are one point: ``1``, ``1.0`` and ``True`` differ in a choice, not in an interval."""
        return _same_value(a, b) if self.kind == "choice" else bool(a == b)

    def optuna_distribution(self) -> Any:
        """The matching ``optuna.distributions`` object (Optuna must be importable)."""
        optuna = _import_optuna()
        if self.kind == "choice":
            return optuna.distributions.CategoricalDistribution(list(self.values))
        if self.kind == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high))
        return optuna.distributions.FloatDistribution(
            float(self.low), float(self.high), log=self.kind == "loguniform"
        )


@dataclass(frozen=True)
class SearchSpace:
    """Every swept name of one ``--sweep``, in the order the user wrote them."""

    dimensions: tuple[Dimension, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The swept names, in order."""
        return tuple(dimension.name for dimension in self.dimensions)

    @property
    def continuous(self) -> tuple[str, ...]:
        """The names whose values are floats in an interval."""
        return tuple(dimension.name for dimension in self.dimensions if dimension.continuous)

    def describe(self) -> str:
        """The space as one ``--sweep`` text that :func:`parse_space` reads back."""
        return "; ".join(f"{dimension.name}={dimension.describe()}" for dimension in self.dimensions)

    def grid_size(self) -> int:
        """How many points the grid has; a continuous dimension refuses with the grid error."""
        continuous = [dimension for dimension in self.dimensions if dimension.continuous]
        if continuous:
            raise JMKUsageError(_grid_error(continuous))
        return math.prod(dimension.size() for dimension in self.dimensions)

    def grid(self) -> list[dict[str, Any]]:
        """Every point of the cartesian product, the first name varying slowest."""
        size = self.grid_size()
        if size > GRID_LIMIT:
            raise JMKUsageError(
                f"--search grid over {self.describe()} would run {size} trials, more than {GRID_LIMIT}: list "
                "fewer values, or use --search random|tpe with --trials N."
            )
        columns = [dimension.grid_values() for dimension in self.dimensions]
        return [dict(zip(self.names, point, strict=True)) for point in itertools.product(*columns)]

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """One random point, each dimension drawn in order from ``rng`` (so a seed gives the same points)."""
        return {dimension.name: dimension.sample(rng) for dimension in self.dimensions}

    def optuna_distributions(self) -> dict[str, Any]:
        """Name -> ``optuna.distributions`` object, for ``study.ask``."""
        return {dimension.name: dimension.optuna_distribution() for dimension in self.dimensions}


def _grid_error(continuous: list[Dimension]) -> str:
    listed = ", ".join(f"{dimension.name}={dimension.describe()}" for dimension in continuous)
    verb = "is" if len(continuous) == 1 else "are"
    name = continuous[0].name
    return (
        f"--search grid needs discrete values: {listed} {verb} continuous; use a list such as "
        f"{name}=[0.001, 0.01, 0.1], or --search random|tpe."
    )


def _same_value(a: Any, b: Any) -> bool:
    """Equal and of the same type: ``1``, ``1.0`` and ``True`` are three different values to a sweep."""
    return type(a) is type(b) and a == b


# -- parsing --sweep -------------------------------------------------------------------------


def parse_space(text: str) -> SearchSpace:
    """The space of a ``--sweep`` text; one :class:`JMKUsageError` lists every bad entry with its fix."""
    entries = _split_entries(text or "")
    if not entries:
        raise JMKUsageError(f"--sweep is empty: give at least one NAME=EXPR, e.g. {_EXAMPLE}. {_KNOWN_FORMS}")
    problems: list[str] = []
    dimensions: list[Dimension] = []
    seen: set[str] = set()
    for entry in entries:
        name = entry.partition("=")[0].strip()
        if name in seen:
            problems.append(f"{entry!r}: {name} is swept twice; give each name once.")
            continue
        seen.add(name)
        try:
            dimensions.append(_parse_entry(entry))
        except _EntryError as exc:
            problems.append(f"{entry!r}: {exc}")
    if problems:
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        raise JMKUsageError(
            f"--sweep is invalid ({count}):\n" + "\n".join(f"  - {problem}" for problem in problems)
            + f"\n{_KNOWN_FORMS}"
        )
    return SearchSpace(tuple(dimensions))


class _EntryError(Exception):
    """What is wrong with one entry of ``--sweep`` (collected, then raised together)."""


def _split_entries(text: str) -> list[str]:
    """The entries between ``;`` and new lines, except inside quotes and brackets (a list may span lines)."""
    entries: list[str] = []
    current: list[str] = []
    quote = ""
    depth = 0
    escaped = False
    for char in text:
        if quote:
            if char == quote and not escaped:
                quote = ""
            escaped = not escaped and char == "\\"
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(depth - 1, 0)
        elif char in ";\n" and depth == 0:
            entries.append("".join(current))
            current = []
            continue
        current.append(char)
    entries.append("".join(current))
    return [entry.strip() for entry in entries if entry.strip()]


def _parse_entry(entry: str) -> Dimension:
    name, equals, expr = entry.partition("=")
    name, expr = name.strip(), expr.strip()
    if not equals:
        raise _EntryError("no '='; write NAME=EXPR, e.g. lr=loguniform(1e-4, 1e-1).")
    if not is_identifier(name):
        raise _EntryError(f"{name!r} is not a Python variable name (letters, digits and _, not a keyword).")
    if not expr:
        raise _EntryError(f"nothing after '='; give {name} a list or a distribution, e.g. {name}=[1, 2].")
    try:
        node = ast.parse(expr, mode="eval").body
    except SyntaxError as exc:
        raise _EntryError(f"{expr!r} is not a Python expression ({exc.msg}).") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, 5000 digits, deep nesting
        raise _EntryError(f"{expr!r} cannot be read: {exc or type(exc).__name__}.") from None
    if isinstance(node, ast.List):
        return Dimension(name, "choice", _choice_values(node.elts, name, expr))
    if isinstance(node, ast.Tuple | ast.Set):
        raise _EntryError(f"write the values as a list in square brackets, e.g. {name}=[32, 64].")
    if not isinstance(node, ast.Call):
        if _is_literal(node):
            raise _EntryError(
                f"{expr} is one value, not a sweep: list values such as {name}=[{expr}, ...], "
                f"or pass a fixed value with --param {name}={expr}."
            )
        raise _EntryError(f"{expr!r} is not a list or a known distribution.")
    function = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
    if function not in _PARSERS:
        raise _EntryError(f"unknown distribution {function}(); known: choice, range, uniform, loguniform, int.")
    if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
        raise _EntryError(f"{function}() takes its values by position, e.g. {name}={_FORMS[function]}.")
    return _PARSERS[function](name, node.args, expr)


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _shown(node: ast.expr, source: str) -> str:
    """``node`` as the user typed it (``ast.unparse`` would show 1e999 as 1e309)."""
    return ast.get_source_segment(source, node) or ast.unparse(node)


def _literal(node: ast.expr, what: str, source: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise _EntryError(f"{_shown(node, source)!r} is not {what}.") from None


def _choice_values(nodes: list[ast.expr], name: str, source: str) -> tuple[Any, ...]:
    if not nodes:
        raise _EntryError(f"the list is empty; give {name} at least one value, e.g. {name}=[32, 64].")
    # Keyed by value, so 1, 1.0 and True are one key, as they are one choice to Optuna (it finds them by ==).
    values: dict[Any, Any] = {}
    for node in nodes:
        value = _literal(node, "a literal value (a number, a string, True/False or None)", source)
        if not isinstance(value, _LITERAL_TYPES):
            raise _EntryError(
                f"{_shown(node, source)} is a {type(value).__name__}; a value must be a number, a string, "
                "True/False or None."
            )
        if value in values:
            twin = values[value]
            same = "twice" if _same_value(twin, value) else f"twice ({twin!r} == {value!r} in Python)"
            raise _EntryError(f"{value!r} is listed {same}; list each value once.")
        values[value] = value
    return tuple(values.values())


# Optuna stores every param as a float: whole numbers beyond 2**53 would come back changed.
_WHOLE_LIMIT = 2**53


def _numbers(
    function: str, name: str, args: list[ast.expr], source: str, counts: tuple[int, ...], whole: bool
) -> list[Any]:
    """The arguments of ``function``: ``counts`` of them, each a (whole) number."""
    if len(args) not in counts:
        wanted = " or ".join(str(count) for count in counts)
        raise _EntryError(f"{function}() takes {wanted} arguments, not {len(args)}: e.g. {name}={_FORMS[function]}.")
    kind = "whole number" if whole else "number"
    values = []
    for arg in args:
        value = _literal(arg, f"a {kind}", source)
        allowed = (int,) if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise _EntryError(f"{function}() arguments must be {kind}s, not {_shown(arg, source)}: "
                              f"e.g. {name}={_FORMS[function]}.")
        if not _finite(value) or (whole and abs(value) > _WHOLE_LIMIT):
            limit = f"whole numbers within +-{_WHOLE_LIMIT} (2**53)" if whole else "finite numbers"
            raise _EntryError(f"{_shown(arg, source)} is too large for {function}(); give {limit}.")
        values.append(value)
    return values


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int of hundreds of digits
        return False


def _parse_choice(name: str, args: list[ast.expr], source: str) -> Dimension:
    return Dimension(name, "choice", _choice_values(args, name, source))


def _parse_range(name: str, args: list[ast.expr], source: str) -> Dimension:
    bounds = _numbers("range", name, args, source, (1, 2, 3), whole=True)
    if len(bounds) == 3 and bounds[2] == 0:
        raise _EntryError("range() step must not be zero.")
    values = range(*bounds)
    if not values:
        raise _EntryError(f"range({', '.join(map(str, bounds))}) is empty; e.g. {name}=range(1, 4) gives 1, 2, 3.")
    if len(values) > GRID_LIMIT:
        raise _EntryError(f"range() gives {len(values)} values, more than {GRID_LIMIT}; "
                          f"use {name}=int({values[0]}, {values[-1]}) to draw from them.")
    return Dimension(name, "choice", tuple(values))


def _parse_interval(kind: str) -> Callable[[str, list[ast.expr], str], Dimension]:
    def parse(name: str, args: list[ast.expr], source: str) -> Dimension:
        low, high = _numbers(kind, name, args, source, (2,), whole=kind == "int")
        if kind == "int":
            if low > high:
                raise _EntryError(f"int({low}, {high}) needs low <= high.")
            return Dimension(name, kind, low=low, high=high)
        if kind == "loguniform" and low <= 0:
            raise _EntryError(f"loguniform({low}, {high}) needs 0 < low: e.g. {name}=loguniform(1e-4, 1e-1).")
        if low >= high:
            raise _EntryError(f"{kind}({low}, {high}) needs low < high.")
        return Dimension(name, kind, low=float(low), high=float(high))

    return parse


_PARSERS = {
    "choice": _parse_choice,
    "range": _parse_range,
    "uniform": _parse_interval("uniform"),
    "loguniform": _parse_interval("loguniform"),
    "int": _parse_interval("int"),
}
_FORMS = {
    "choice": "choice(32, 64)",
    "range": "range(1, 4)",
    "uniform": "uniform(0.0, 0.5)",
    "loguniform": "loguniform(1e-4, 1e-1)",
    "int": "int(1, 8)",
}


# -- --objective and --search ----------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """The metric a sweep ranks its trials by, and whether lower or higher wins."""

    metric: str
    direction: str  # "min" or "max"

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``; NaN is never better, and any number beats NaN."""
        if math.isnan(a):
            return False
        if math.isnan(b):
            return True
        return a < b if self.direction == "min" else a > b

    @property
    def optuna_direction(self) -> str:
        """Optuna's name for the direction."""
        return "minimize" if self.direction == "min" else "maximize"

    def __str__(self) -> str:
        return f"{self.metric}:{self.direction}"


def parse_objective(text: str | None) -> Objective:
    """The objective of ``--objective METRIC:min|max``."""
    example = "e.g. --objective val_loss:min"
    if text is None or not text.strip():
        raise JMKUsageError(f"--sweep needs --objective METRIC:min|max, {example}")
    metric, colon, direction = text.strip().rpartition(":")
    metric, direction = metric.strip(), direction.strip().lower()
    if not colon or direction not in ("min", "max"):
        whole = text.strip()
        raise JMKUsageError(
            f"--objective {text!r} does not say which way is better: add :min or :max, "
            f"e.g. --objective {whole}:min (lower is better) or {whole}:max."
        )
    if not metric or not _METRIC_RE.match(metric):
        raise JMKUsageError(
            f"--objective {text!r}: {metric!r} is not a metric name (letters, digits, _ - . / and spaces), {example}"
        )
    return Objective(metric, direction)


def parse_search(text: str | None, space: SearchSpace, prune: bool) -> str:
    """The search of ``--search``: by default a grid when every dimension is discrete, else random.

    Refuses before anything runs: an unknown search, a grid that cannot be enumerated, and Optuna
    missing where ``tpe`` or ``--prune`` needs it.
    """
    search = (text or "").strip().lower() or ("random" if space.continuous else "grid")
    if search not in SEARCHES:
        raise JMKUsageError(f"--search {text!r} is not a search; use --search grid, random or tpe.")
    if search == "grid":
        space.grid()  # the grid error, or the too-many-points error
    if search == "tpe" or prune:
        _import_optuna()
    return search


def plan_trials(
    space: SearchSpace, search: str, trials: int | None, repeats: int, seed: int | None
) -> list[dict[str, Any]] | None:
    """The params of every trial up front for grid and random; ``None`` for tpe, which asks one at a time.

    Each point is repeated ``repeats`` times in a row (the same params, grouped by the controller).
    """
    if search not in SEARCHES:
        raise JMKUsageError(f"--search {search!r} is not a search; use --search grid, random or tpe.")
    if trials is not None and trials < 1:
        raise JMKUsageError(f"--trials {trials} runs nothing; give at least 1, e.g. --trials 20.")
    if repeats < 1:
        raise JMKUsageError(f"--repeats {repeats} runs nothing; give at least 1, e.g. --repeats 3.")
    if search == "tpe":
        if trials is None:
            raise JMKUsageError("--search tpe needs --trials N, e.g. --trials 20.")
        return None
    if search == "grid":
        points = space.grid()
        if trials is not None and trials < len(points):
            raise JMKUsageError(
                f"--trials {trials} is fewer than the grid's {len(points)} points: raise --trials to "
                f"{len(points)} or drop it (a grid runs every point)."
            )
    else:
        if trials is None:
            raise JMKUsageError("--search random needs --trials N, e.g. --trials 20.")
        rng = random.Random(seed)  # noqa: S311 - reproducible draws, not secrets
        points = [space.sample(rng) for _ in range(trials)]
    return [dict(point) for point in points for _ in range(repeats)]


# -- Optuna ----------------------------------------------------------------------------------


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise JMKUsageError(_OPTUNA_MISSING) from None
    return optuna


class OptunaSearch:
    """An Optuna study driven by ask/tell, for ``--search tpe`` and for ``--prune`` (any search).

    The study lives in SQLite at ``storage_path`` and is loaded if it exists, so a restarted
    controller continues it: trials asked by an earlier process are found by their number.
    """

    def __init__(
        self,
        space: SearchSpace,
        objective: Objective,
        storage_path: Path | str,
        study_name: str,
        search: str,
        prune: str | None,
        seed: int | None = None,
    ) -> None:
        optuna = _import_optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if search not in SEARCHES:
            raise JMKUsageError(f"--search {search!r} is not a search; use --search grid, random or tpe.")
        if prune is not None and prune not in PRUNERS:
            raise JMKUsageError(f"--prune {prune!r} is not a pruner; use --prune median or --prune halving.")
        self.space = space
        self.objective = objective
        self._optuna = optuna
        self._distributions = space.optuna_distributions()
        # Grid and random trials come with their params (enqueued), so their sampler never draws.
        sampler = optuna.samplers.TPESampler(seed=seed) if search == "tpe" else optuna.samplers.RandomSampler(seed=seed)
        pruner: Any
        if prune == "median":
            pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
        elif prune == "halving":
            pruner = optuna.pruners.SuccessiveHalvingPruner()
        else:
            pruner = optuna.pruners.NopPruner()
        self.study = optuna.create_study(
            storage=optuna.storages.RDBStorage(f"sqlite:///{Path(storage_path)}"),
            sampler=sampler,
            pruner=pruner,
            study_name=study_name,
            direction=objective.optuna_direction,
            load_if_exists=True,
        )
        self._trials: dict[int, Any] = {}

    def ask(self, params: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """A new trial: its Optuna number and params, drawn by the sampler or fixed to ``params``."""
        if params is None:
            trial = self.study.ask(self._distributions)
        else:
            self._check_params(params)
            trial = self._ask_fixed(params)
        self._trials[trial.number] = trial
        return trial.number, {name: trial.params[name] for name in self.space.names}

    def _check_params(self, params: dict[str, Any]) -> None:
        if set(params) != set(self.space.names):
            raise ValueError(f"trial params {sorted(params)} are not the swept names {list(self.space.names)}")
        for dimension in self.space.dimensions:
            if not dimension.contains(params[dimension.name]):
                raise ValueError(f"{dimension.name}={params[dimension.name]!r} is not in {dimension.describe()}")

    def _ask_fixed(self, params: dict[str, Any]) -> Any:
        """Enqueue ``params`` and ask for them; a trial another process enqueued and never asked is failed."""
        waiting = self.study.get_trials(deepcopy=False, states=(self._optuna.trial.TrialState.WAITING,))
        self.study.enqueue_trial(params)
        for _ in range(len(waiting) + 1):  # the queue is first in, first out: ours comes last
            trial = self.study.ask(self._distributions)
            if all(dimension.same(trial.params[dimension.name], params[dimension.name])
                   for dimension in self.space.dimensions):
                return trial
            self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
        raise RuntimeError(f"Optuna did not give back the enqueued params {params}")

    def _trial_id(self, number: int) -> int:
        try:
            return int(self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number))
        except KeyError:
            raise ValueError(f"the study {self.study.study_name!r} has no trial {number}") from None

    def _trial(self, number: int) -> Any:
        """The trial ``number``, rebuilt from the storage when an earlier process asked for it."""
        if number not in self._trials:
            self._trials[number] = self._optuna.trial.Trial(self.study, self._trial_id(number))
        return self._trials[number]

    def _finished(self, number: int) -> bool:
        return bool(self.study._storage.get_trial(self._trial_id(number)).state.is_finished())

    def report(self, number: int, step: int, value: float) -> None:
        """An intermediate value of trial ``number``; a step already reported, or a finished trial, is ignored."""
        # Pruners count steps from 0; a metric logged at a negative step says nothing they can use.
        if step < 0 or self._finished(number):
            return
        with warnings.catch_warnings():  # Optuna warns on a step reported twice, which metric polling does
            warnings.simplefilter("ignore")
            self._trial(number).report(float(value), int(step))

    def should_prune(self, number: int) -> bool:
        """Whether the pruner would stop trial ``number`` now; never for a finished trial or without ``--prune``."""
        if self._finished(number):
            return False
        return bool(self._trial(number).should_prune())

    def tell(self, number: int, state: str, value: float | None = None) -> None:
        """Finish trial ``number``: ``complete`` with its objective, ``pruned`` or ``fail``; telling again: no-op."""
        if state not in TRIAL_STATES:
            raise ValueError(f"trial state {state!r} is not one of {', '.join(TRIAL_STATES)}")
        states = self._optuna.trial.TrialState
        if state == "complete":
            if value is None:
                raise ValueError(f"trial {number} is complete but has no objective value")
            if math.isnan(value):  # Optuna cannot rank NaN: it would fail the trial, with a warning
                self.study.tell(number, state=states.FAIL, skip_if_finished=True)
            else:
                self.study.tell(number, float(value), skip_if_finished=True)
        else:
            self.study.tell(number, state=states.PRUNED if state == "pruned" else states.FAIL, skip_if_finished=True)
        self._trials.pop(number, None)
