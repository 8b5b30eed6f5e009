"""Sweeps' search space: parsing --sweep, --objective and --search, grids, seeded samples, trial plans, Optuna."""

from __future__ import annotations

import math
import random
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from jupyter_mlflow_k8s.exceptions import JMKUsageError
from jupyter_mlflow_k8s.sweeps.space import (
    GRID_LIMIT,
    Dimension,
    Objective,
    OptunaSearch,
    parse_objective,
    parse_search,
    parse_space,
    plan_trials,
)

ISSUE_EXAMPLE = "lr=loguniform(1e-4,1e-1); batch=[32,64]; layers=range(1,4)"


def usage_error(text: str) -> str:
    with pytest.raises(JMKUsageError) as info:
        parse_space(text)
    return str(info.value)


# -- --sweep ---------------------------------------------------------------------------------


def test_the_issues_example_parses_into_three_dimensions() -> None:
    space = parse_space(ISSUE_EXAMPLE)
    assert space.names == ("lr", "batch", "layers")
    assert space.dimensions == (
        Dimension("lr", "loguniform", low=1e-4, high=1e-1),
        Dimension("batch", "choice", (32, 64)),
        Dimension("layers", "choice", (1, 2, 3)),
    )
    assert space.continuous == ("lr",)
    assert [d.describe() for d in space.dimensions] == ["loguniform(0.0001, 0.1)", "[32, 64]", "[1, 2, 3]"]
    assert parse_space(space.describe()) == space


def test_every_form_of_the_grammar() -> None:
    text = """
        opt = choice("adam", 'sgd;momentum', None)
        flags=[True, False, 0.5, -2]; depth=int(1, 4)
        drop=uniform(0, 0.5); every=range(10, 0, -4)
        widths=[16,
                32]
    """
    space = parse_space(text)
    assert space.names == ("opt", "flags", "depth", "drop", "every", "widths")
    opt, flags, depth, drop, every, widths = space.dimensions
    assert opt.values == ("adam", "sgd;momentum", None)  # a ; inside quotes does not split
    assert flags.values == (True, False, 0.5, -2)
    assert (depth.kind, depth.low, depth.high, depth.describe()) == ("int", 1, 4, "int(1, 4)")
    assert depth.grid_values() == (1, 2, 3, 4)
    assert (drop.kind, drop.low, drop.high, drop.continuous) == ("uniform", 0.0, 0.5, True)
    assert every.values == (10, 6, 2)
    assert widths.values == (16, 32)  # a list may span lines
    assert parse_space(space.describe()) == space


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("x=normal(0,1)", "unknown distribution normal()"),
        ("x=[]", "the list is empty"),
        ("x=choice()", "the list is empty"),
        ("x=range(0)", "range(0) is empty"),
        ("x=range(5, 1)", "range(5, 1) is empty"),
        ("x=range(1, 5, 0)", "step must not be zero"),
        ("x=range(0, 100000)", "more than 10000; use x=int(0, 99999)"),
        ("lr=0.1", "one value, not a sweep"),
        ("lr", "no '='"),
        ("1lr=[1]", "not a Python variable name"),
        ("for=[1]", "not a Python variable name"),
        ("x=", "nothing after '='"),
        ("x=[1,", "'[1,' is not a Python expression ('[' was never closed)"),
        ("x=(1, 2)", "as a list in square brackets"),
        ("x=uniform(1, 0)", "needs low < high"),
        ("x=uniform(1, 1)", "needs low < high"),
        ("x=uniform(0, 1e999)", "1e999 is too large for uniform(); give finite numbers"),
        ("x=int(0, 9007199254740993)", "too large for int(); give whole numbers within +-9007199254740992"),
        ("x=range(" + "9" * 400 + ")", "too large for range()"),
        ("x=loguniform(0, 1)", "needs 0 < low"),
        ("x=uniform(0, 'a')", "must be numbers, not 'a'"),
        ("x=uniform(0, y)", "'y' is not a number"),
        ("x=uniform(0)", "takes 2 arguments, not 1"),
        ("x=int(1.5, 3)", "must be whole numbers"),
        ("x=int(True, 3)", "must be whole numbers"),
        ("x=int(3, 1)", "needs low <= high"),
        ("x=choice(values=[1])", "takes its values by position"),
        ("x=[1, [2]]", "a list; a value must be a number"),
        ("x=[a]", "'a' is not a literal value"),
        ("x=[1, 1]", "1 is listed twice"),
        ("x=[1, True]", "True is listed twice (1 == True in Python)"),
        ("x=[" + "9" * 5000 + "]", "Exceeds the limit"),
        ("x=\0", "cannot contain null bytes"),
        ("x=np.random.normal(0, 1)", "unknown distribution np.random.normal()"),
        ("x=[1]; x=[2]", "x is swept twice"),
    ],
)
def test_a_bad_entry_names_its_problem_and_the_known_forms(text: str, needle: str) -> None:
    message = usage_error(text)
    assert needle in message
    assert "Known forms:" in message and "loguniform(low, high)" in message


def test_every_bad_entry_is_listed_at_once() -> None:
    message = usage_error("x=normal(0,1); ok=[1, 2]; y=[]\nz=uniform(2, 1); w")
    assert "(4 problems)" in message
    for entry in ("'x=normal(0,1)'", "'y=[]'", "'z=uniform(2, 1)'", "'w'"):
        assert entry in message
    assert "'ok=" not in message


@pytest.mark.parametrize("text", ["", "   ", " ;\n ; "])
def test_an_empty_sweep(text: str) -> None:
    assert usage_error(text).startswith("--sweep is empty:")


# -- grids and samples -----------------------------------------------------------------------


def test_a_grid_of_two_by_three_in_order() -> None:
    space = parse_space("a=[1, 2]; b=['x', 'y', 'z']")
    assert space.grid_size() == 6
    assert space.grid() == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
        {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"},
    ]


def test_a_grid_refuses_continuous_dimensions_and_names_them() -> None:
    space = parse_space("lr=loguniform(1e-4, 1e-1); batch=[32]; drop=uniform(0, 1)")
    for call in (space.grid, space.grid_size, space.dimensions[0].grid_values):
        with pytest.raises(JMKUsageError, match="--search grid needs discrete values") as info:
            call()
        assert "lr=loguniform(0.0001, 0.1)" in str(info.value)
        assert "use a list such as lr=[0.001, 0.01, 0.1], or --search random|tpe" in str(info.value)
    with pytest.raises(JMKUsageError) as info:
        space.grid()
    assert "drop=uniform(0.0, 1.0) are continuous" in str(info.value)


def test_a_grid_over_too_many_points_is_refused() -> None:
    space = parse_space("a=int(1, 200); b=int(1, 100)")
    assert space.grid_size() == 20_000 > GRID_LIMIT
    with pytest.raises(JMKUsageError, match="would run 20000 trials, more than 10000"):
        space.grid()
    with pytest.raises(JMKUsageError, match="more than 10000"):
        parse_space("a=int(0, 20000)").dimensions[0].grid_values()


def test_random_samples_are_reproducible_and_within_bounds() -> None:
    space = parse_space("lr=loguniform(1e-4, 1e-1); drop=uniform(-1, 1); n=int(2, 5); batch=[32, 64]")
    first = [space.sample(random.Random(7)) for _ in range(3)]
    assert first == [space.sample(random.Random(7)) for _ in range(3)]
    rng = random.Random(1)
    points = [space.sample(rng) for _ in range(2000)]
    assert points[0] != points[1]
    lrs = [p["lr"] for p in points]
    assert all(1e-4 <= lr <= 1e-1 for lr in lrs)
    # uniform in log space: about a third of the draws in each decade, where uniform draws would put 90% in the last
    decades = [sum(lo <= lr < lo * 10 for lr in lrs) for lo in (1e-4, 1e-3, 1e-2)]
    assert all(500 < count < 830 for count in decades), decades
    assert all(-1 <= p["drop"] <= 1 for p in points)
    assert {p["n"] for p in points} == {2, 3, 4, 5}
    assert {p["batch"] for p in points} == {32, 64}


def test_contains_tells_points_of_the_space_apart() -> None:
    lr, n, batch = parse_space("lr=uniform(0, 1); n=int(1, 3); batch=[1, 'a']").dimensions
    assert lr.contains(0.5) and lr.contains(1) and not lr.contains(1.5) and not lr.contains("0.5")
    assert n.contains(3) and not n.contains(3.0) and not n.contains(4) and not n.contains(True)
    assert batch.contains(1) and batch.contains("a") and not batch.contains(1.0) and not batch.contains(True)


# -- --objective and --search ----------------------------------------------------------------


def test_parse_objective() -> None:
    objective = parse_objective(" val_loss:min ")
    assert objective == Objective("val_loss", "min")
    assert str(objective) == "val_loss:min" and objective.optuna_direction == "minimize"
    assert objective.better(0.1, 0.2) and not objective.better(0.2, 0.2) and not objective.better(0.3, 0.2)
    accuracy = parse_objective("eval/top-1 acc.v2:MAX")
    assert (accuracy.metric, accuracy.direction, accuracy.optuna_direction) == ("eval/top-1 acc.v2", "max", "maximize")
    assert accuracy.better(0.9, 0.8) and not accuracy.better(0.8, 0.9)
    assert accuracy.better(0.1, math.nan) and not accuracy.better(math.nan, 0.1)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (None, "--sweep needs --objective METRIC:min|max, e.g. --objective val_loss:min"),
        ("", "--sweep needs --objective"),
        ("val_loss", "add :min or :max, e.g. --objective val_loss:min"),
        ("val_loss:lowest", "add :min or :max"),
        (":min", "'' is not a metric name"),
        ("loss!:max", "'loss!' is not a metric name"),
    ],
)
def test_a_bad_objective(text: str | None, needle: str) -> None:
    with pytest.raises(JMKUsageError) as info:
        parse_objective(text)
    assert needle in str(info.value)


def test_parse_search_defaults_to_grid_for_discrete_spaces_and_random_otherwise() -> None:
    discrete = parse_space("a=[1, 2]; n=int(1, 3)")
    continuous = parse_space(ISSUE_EXAMPLE)
    assert parse_search(None, discrete, prune=False) == "grid"
    assert parse_search(None, continuous, prune=False) == "random"
    assert parse_search(" Random ", discrete, prune=False) == "random"
    with pytest.raises(JMKUsageError, match="'bayes' is not a search; use --search grid, random or tpe"):
        parse_search("bayes", discrete, prune=False)
    with pytest.raises(JMKUsageError, match="--search grid needs discrete values: lr=loguniform"):
        parse_search("grid", continuous, prune=False)


def test_tpe_and_prune_without_optuna_say_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    space = parse_space("a=[1, 2]")
    assert parse_search("grid", space, prune=False) == "grid"
    for search, prune in (("tpe", False), ("grid", True)):
        with pytest.raises(JMKUsageError, match=r"pip install 'jupyter_mlflow_k8s\[sweep\]' \(optuna\)"):
            parse_search(search, space, prune=prune)
    with pytest.raises(JMKUsageError, match="--search tpe and --prune use Optuna"):
        OptunaSearch(space, Objective("loss", "min"), "unused.db", "s", "tpe", None)


# -- plan_trials -----------------------------------------------------------------------------


def test_plan_a_grid_with_repeats() -> None:
    space = parse_space("a=[1, 2]; b=['x', 'y', 'z']")
    plan = plan_trials(space, "grid", None, 2, None)
    assert plan is not None and len(plan) == 12
    assert plan[:4] == [{"a": 1, "b": "x"}, {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "y"}]
    assert plan[0] is not plan[1]  # each trial's params are its own
    assert plan_trials(space, "grid", 50, 1, None) == space.grid()  # more trials than points: just the grid


def test_plan_random_trials_from_a_seed() -> None:
    space = parse_space(ISSUE_EXAMPLE)
    plan = plan_trials(space, "random", 5, 3, seed=11)
    assert plan is not None and len(plan) == 15
    assert plan == plan_trials(space, "random", 5, 3, seed=11)
    assert plan != plan_trials(space, "random", 5, 3, seed=12)
    for i in range(0, 15, 3):
        assert plan[i] == plan[i + 1] == plan[i + 2]
    assert len({tuple(p.values()) for p in plan}) == 5
    rng = random.Random(11)
    assert plan[::3] == [space.sample(rng) for _ in range(5)]


def test_plan_tpe_asks_one_at_a_time() -> None:
    assert plan_trials(parse_space(ISSUE_EXAMPLE), "tpe", 20, 1, None) is None


@pytest.mark.parametrize(
    ("search", "trials", "repeats", "needle"),
    [
        ("grid", 5, 1, "--trials 5 is fewer than the grid's 6 points: raise --trials to 6 or drop it"),
        ("random", None, 1, "--search random needs --trials N"),
        ("tpe", None, 1, "--search tpe needs --trials N"),
        ("random", 0, 1, "--trials 0 runs nothing"),
        ("grid", None, 0, "--repeats 0 runs nothing"),
        ("anneal", 5, 1, "'anneal' is not a search"),
    ],
)
def test_plan_errors(search: str, trials: int | None, repeats: int, needle: str) -> None:
    with pytest.raises(JMKUsageError) as info:
        plan_trials(parse_space("a=[1, 2]; b=['x', 'y', 'z']"), search, trials, repeats, None)
    assert needle in str(info.value)


# -- OptunaSearch ----------------------------------------------------------------------------


@pytest.fixture
def optuna() -> Any:
    return pytest.importorskip("optuna", reason="--search tpe and --prune need Optuna (the [sweep] extra)")


def test_optuna_distributions(optuna: Any) -> None:
    space = parse_space("lr=loguniform(1e-4, 1e-1); drop=uniform(0, 1); n=int(1, 4); batch=[32, 'a', None]")
    assert space.optuna_distributions() == {
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
        "drop": optuna.distributions.FloatDistribution(0.0, 1.0),
        "n": optuna.distributions.IntDistribution(1, 4),
        "batch": optuna.distributions.CategoricalDistribution([32, "a", None]),
    }


def test_tpe_finds_the_optimum_of_a_quadratic(optuna: Any, tmp_path: Path) -> None:
    search = OptunaSearch(parse_space("x=uniform(-10, 10)"), Objective("loss", "min"), tmp_path / "s.db", "s",
                          "tpe", None, seed=0)
    distances = []
    for _ in range(30):
        number, params = search.ask()
        distances.append(abs(params["x"] - 2))
        search.tell(number, "complete", (params["x"] - 2) ** 2)
    assert min(distances) < 0.25
    # random draws would average 5.2 from x=2; TPE's last draws stay near it
    assert statistics.mean(distances[-10:]) < 3.5, distances


def test_fixed_params_come_back_as_asked(optuna: Any, tmp_path: Path) -> None:
    space = parse_space("a=[1, 2]; b=['x', 'y', None]; n=int(0, 3); lr=loguniform(1e-3, 1)")
    search = OptunaSearch(space, Objective("acc", "max"), tmp_path / "s.db", "s", "grid", None, seed=1)
    plan = plan_trials(space, "random", 6, 1, seed=3)
    assert plan is not None
    asked = [search.ask(params) for params in plan]
    assert [number for number, _ in asked] == list(range(6))
    assert [params for _, params in asked] == plan
    assert [t.params for t in search.study.trials] == plan
    with pytest.raises(ValueError, match="is not in int"):
        search.ask({"a": 1, "b": "x", "n": 9, "lr": 0.1})
    with pytest.raises(ValueError, match="not the swept names"):
        search.ask({"a": 1})


def test_a_trial_another_process_enqueued_and_never_asked_is_failed(optuna: Any, tmp_path: Path) -> None:
    space = parse_space("x=uniform(0, 10)")
    search = OptunaSearch(space, Objective("loss", "min"), tmp_path / "s.db", "s", "random", None)
    search.study.enqueue_trial({"x": 9.0})  # a controller that stopped between enqueue and ask
    number, params = search.ask({"x": 3.0})
    assert params == {"x": 3.0} and number == 1
    assert [(t.state.name, t.params) for t in search.study.trials] == [("FAIL", {"x": 9.0}), ("RUNNING", {"x": 3.0})]


def test_the_median_pruner_stops_a_much_worse_trial(optuna: Any, tmp_path: Path) -> None:
    space = parse_space("x=uniform(0, 10)")
    search = OptunaSearch(space, Objective("loss", "min"), tmp_path / "s.db", "s", "random", "median", seed=0)
    for x in (1.0, 2.0, 3.0):
        number, _ = search.ask({"x": x})
        for step in range(4):
            search.report(number, step, 1.0 - step * 0.1)
        search.tell(number, "complete", 0.7)
    bad, _ = search.ask({"x": 8.0})
    good, _ = search.ask({"x": 4.0})
    search.report(bad, 0, 50.0)
    assert not search.should_prune(bad)  # warm-up: step 0 never prunes
    search.report(bad, 1, 40.0)
    search.report(bad, 1, 0.0)  # a step reported again is ignored
    search.report(good, 0, 0.9)
    search.report(good, 1, 0.8)
    assert search.should_prune(bad)
    assert not search.should_prune(good)
    search.tell(bad, "pruned")
    search.tell(bad, "pruned")  # told twice: no error
    search.report(bad, 2, 1.0)  # a metric that arrives after the end: ignored
    assert not search.should_prune(bad)
    trial = search.study.trials[bad]
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.intermediate_values == {0: 50.0, 1: 40.0}


def test_no_pruning_without_prune(optuna: Any, tmp_path: Path) -> None:
    search = OptunaSearch(parse_space("x=uniform(0, 10)"), Objective("loss", "min"), tmp_path / "s.db", "s",
                          "random", None, seed=0)
    for x in (1.0, 2.0, 3.0):
        number, _ = search.ask({"x": x})
        search.report(number, 1, 1.0)
        search.tell(number, "complete", 1.0)
    bad, _ = search.ask({"x": 8.0})
    search.report(bad, 1, 99.0)
    search.report(bad, 2, 99.0)
    assert not search.should_prune(bad)
    halving = OptunaSearch(parse_space("x=uniform(0, 10)"), Objective("loss", "min"), tmp_path / "h.db", "h",
                           "tpe", "halving")
    assert isinstance(halving.study.pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(halving.study.sampler, optuna.samplers.TPESampler)


def test_a_restarted_search_continues_the_study(optuna: Any, tmp_path: Path) -> None:
    space = parse_space("x=uniform(0, 10)")
    objective = Objective("loss", "min")
    first = OptunaSearch(space, objective, tmp_path / "sweep.db", "sweep-1", "random", "median", seed=0)
    done, _ = first.ask({"x": 1.0})
    first.tell(done, "complete", 0.5)
    running, _ = first.ask({"x": 2.0})
    first.report(running, 0, 3.0)
    del first

    second = OptunaSearch(space, objective, tmp_path / "sweep.db", "sweep-1", "random", "median", seed=0)
    assert [(t.number, t.state.name) for t in second.study.trials] == [(0, "COMPLETE"), (1, "RUNNING")]
    second.report(running, 1, 2.0)  # a trial asked by the first process, found by its number
    assert not second.should_prune(running)
    second.tell(running, "complete", 2.0)
    assert second.study.trials[1].intermediate_values == {0: 3.0, 1: 2.0}
    assert second.study.best_trial.number == 0
    assert second.ask()[0] == 2
    with pytest.raises(ValueError, match="has no trial 7"):
        second.report(7, 0, 1.0)


def test_bad_optuna_arguments(optuna: Any, tmp_path: Path) -> None:
    space = parse_space("x=[1, 2]")
    objective = Objective("loss", "min")
    with pytest.raises(JMKUsageError, match="use --prune median or --prune halving"):
        OptunaSearch(space, objective, tmp_path / "s.db", "s", "grid", "asha")
    with pytest.raises(JMKUsageError, match="use --search grid, random or tpe"):
        OptunaSearch(space, objective, tmp_path / "s.db", "s", "hyperband", None)
    search = OptunaSearch(space, objective, tmp_path / "s.db", "s", "grid", None)
    number, _ = search.ask({"x": 1})
    with pytest.raises(ValueError, match="no objective value"):
        search.tell(number, "complete")
    with pytest.raises(ValueError, match="not one of complete, pruned, fail"):
        search.tell(number, "done")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        search.tell(number, "complete", math.nan)  # a NaN objective cannot be ranked: the trial fails, silently
    assert search.study.trials[number].state == optuna.trial.TrialState.FAIL

