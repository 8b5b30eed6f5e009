"""Pipeline specs: pipeline.yaml and the Python API, validation, templates, notebook analysis, step outputs."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import jupyter_mlflow_k8s
from jupyter_mlflow_k8s.exceptions import JMKUsageError
from jupyter_mlflow_k8s.models import Resources
from jupyter_mlflow_k8s.pipelines.model import Pipeline, Step
from jupyter_mlflow_k8s.pipelines.outputs import OUTPUTS_ENV, output, read_outputs
from jupyter_mlflow_k8s.pipelines.spec import (
    InvalidPipeline,
    load_pipeline,
    notebook_outputs,
    notebook_parameters,
    parse_value,
    pipeline,
    pipeline_from_dict,
    resolve_parameters,
    topological_order,
    upstream,
    validate,
)


def write_notebook(path: Path, *cells: str, parameters: str | None = None, markdown: str | None = None) -> Path:
    """A real notebook: an optional markdown cell, an optional cell tagged parameters, then code cells."""
    nb_cells = [new_markdown_cell(markdown)] if markdown else []
    if parameters is not None:
        nb_cells.append(new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    nb_cells += [new_code_cell(source) for source in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(new_notebook(cells=nb_cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}), path)
    return path


PIPELINE_YAML = """\
name: churn
parameters:
  data_uri: s3://data/churn.csv
  lr: 0.01
  run: nightly
max_parallel: 2
steps:
  prepare:
    notebook: nb/prepare.ipynb
    parameters:
      data_uri: "{{ parameters.data_uri }}"
  train:
    notebook: nb/train.ipynb
    needs: [prepare]
    parameters:
      features_uri: "{{ steps.prepare.outputs.features_uri }}"
      lr: "{{parameters.lr}}"
    resources: {cpu: 2, memory: 8Gi, gpus: 1}
    backend: kubernetes
    image: ghcr.io/acme/train:1
    retries: 2
    cache: false
    timeout: 2h
  evaluate:
    notebook: nb/evaluate.ipynb
    needs: train
    parameters:
      report_uri: "s3://reports/{{ parameters.run }}/{{ steps.prepare.outputs.rows }}.html"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Three step notebooks and the pipeline.yaml that chains them; returns the pipeline file."""
    write_notebook(
        tmp_path / "nb" / "prepare.ipynb",
        "import jupyter_mlflow_k8s as jmk\n%matplotlib inline\nfeatures = data_uri + '/features'",
        "jmk.output('features_uri', features)\njupyter_mlflow_k8s.output(name='rows', value=100)",
        parameters='data_uri = "s3://default"',
        markdown="# Prepare",
    )
    write_notebook(
        tmp_path / "nb" / "train.ipynb",
        "from jupyter_mlflow_k8s import output\n!nvidia-smi\noutput('auc', 0.91)",
        parameters="features_uri = ''\nlr: float = 0.001\nepochs = 3",
    )
    write_notebook(tmp_path / "nb" / "evaluate.ipynb", "print(report_uri)", parameters="report_uri = None")
    (tmp_path / "pipeline.yaml").write_text(PIPELINE_YAML)
    return tmp_path / "pipeline.yaml"


def write_yaml(folder: Path, text: str) -> Path:
    path = folder / "pipeline.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path, **kwargs: Any) -> list[str]:
    with pytest.raises(InvalidPipeline) as info:
        load_pipeline(path, **kwargs)
    assert str(info.value).count("\n  - ") == len(info.value.problems)  # one line per problem
    return info.value.problems


def only_problem(path: Path, **kwargs: Any) -> str:
    problems = problems_of(path, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


# -- loading -----------------------------------------------------------------------------------


def test_load_pipeline_reads_every_field(project: Path) -> None:
    p = load_pipeline(project)
    folder = project.parent
    assert p.name == "churn" and p.source == project and p.max_parallel == 2
    assert p.parameters == {"data_uri": "s3://data/churn.csv", "lr": 0.01, "run": "nightly"}
    assert list(p.steps) == ["prepare", "train", "evaluate"]
    assert p.steps["prepare"] == Step(
        name="prepare",
        notebook=folder / "nb" / "prepare.ipynb",
        parameters={"data_uri": "{{ parameters.data_uri }}"},
    )
    assert p.steps["train"] == Step(
        name="train",
        notebook=folder / "nb" / "train.ipynb",
        needs=("prepare",),
        parameters={"features_uri": "{{ steps.prepare.outputs.features_uri }}", "lr": "{{parameters.lr}}"},
        resources=Resources(cpu="2", memory="8Gi", gpus=1),
        backend="kubernetes",
        image="ghcr.io/acme/train:1",
        retries=2,
        cache=False,
        timeout=7200.0,
    )
    assert p.steps["evaluate"].needs == ("train",)  # a single name is a list of one
    assert all(step.notebook.is_absolute() for step in p.steps.values())


def test_notebook_paths_are_relative_to_the_yaml_folder_not_the_cwd(
    project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    p = load_pipeline(project)
    assert p.steps["train"].notebook == project.parent / "nb" / "train.ipynb"


def test_overrides_are_read_as_yaml_scalars(project: Path) -> None:
    p = load_pipeline(project, overrides={"lr": "0.1", "run": "true", "data_uri": "s3://other/x.csv"})
    assert p.parameters == {"data_uri": "s3://other/x.csv", "lr": 0.1, "run": True}
    assert isinstance(p.parameters["lr"], float)
    assert load_pipeline(project, overrides={"run": "3"}).parameters["run"] == 3


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.1", 0.1),
        ("3", 3),
        ("true", True),
        ("no", False),  # YAML 1.1, as PyYAML reads pipeline.yaml itself
        ("null", None),
        ("2024-01-31", "2024-01-31"),  # dates stay strings
        ("[64, 128]", [64, 128]),
        ("{a: 1}", {"a": 1}),
        ("note: hello", "note: hello"),  # not a flow collection: stays as typed
        ("", ""),
        ("s3://b/x", "s3://b/x"),
        ("[unclosed", "[unclosed"),
    ],
)
def test_parse_value(text: str, value: object) -> None:
    assert parse_value(text) == value
    assert type(parse_value(text)) is type(value)


def test_an_override_of_an_undeclared_parameter_lists_the_declared_ones(project: Path) -> None:
    problem = only_problem(project, overrides={"lrr": "0.1"})
    assert "-p lrr" in problem and "did you mean 'lr'" in problem
    assert "Declared: data_uri, lr, run" in problem


def test_dates_in_the_yaml_stay_strings(tmp_path: Path) -> None:
    write_notebook(tmp_path / "a.ipynb", "pass")
    path = write_yaml(tmp_path, "name: p\nparameters: {day: 2024-01-31}\nsteps: {a: {notebook: a.ipynb}}\n")
    assert load_pipeline(path).parameters == {"day": "2024-01-31"}


def test_unknown_keys_get_a_did_you_mean(tmp_path: Path) -> None:
    write_notebook(tmp_path / "a.ipynb", "pass")
    path = write_yaml(
        tmp_path,
        """\
        name: p
        max_paralel: 3
        steps:
          a:
            notebook: a.ipynb
            need: [b]
            resources: {gpu: 1}
        """,
    )
    problems = problems_of(path)
    assert len(problems) == 3, problems
    assert problems[0].startswith("max_paralel: unknown key (did you mean 'max_parallel'?)")
    assert "at the top level: name, parameters, steps, max_parallel" in problems[0]
    assert problems[1].startswith("steps.a.need: unknown key (did you mean 'needs'?)")
    assert problems[2].startswith("steps.a.resources.gpu: unknown key (did you mean 'gpus'?)")


def test_a_step_defined_twice_in_the_yaml_is_refused(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "name: p\nsteps:\n  a: {notebook: a.ipynb}\n  a: {notebook: b.ipynb}\n")
    with pytest.raises(JMKUsageError, match="found the key 'a' twice"):
        load_pipeline(path)


def test_an_unquoted_template_says_to_quote_it(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path, "name: p\nparameters: {lr: 1}\nsteps:\n  a:\n    notebook: a.ipynb\n    parameters:\n      lr: {{ parameters.lr }}\n"
    )
    with pytest.raises(JMKUsageError, match="A template must be quoted") as info:
        load_pipeline(path)
    assert 'lr: "{{ parameters.lr }}"' in str(info.value)


def test_a_missing_pipeline_file(tmp_path: Path) -> None:
    with pytest.raises(JMKUsageError, match="No pipeline file"):
        load_pipeline(tmp_path / "nope.yaml")


def test_wrong_types_are_listed(tmp_path: Path) -> None:
    write_notebook(tmp_path / "a.ipynb", "pass")
    path = write_yaml(
        tmp_path,
        """\
        name: p
        max_parallel: 0
        steps:
          a:
            notebook: a.ipynb
            needs: {b: 1}
            retries: -1
            cache: "yes"
            timeout: soon
          b: b.ipynb
        """,
    )
    problems = "\n".join(problems_of(path))
    assert "max_parallel: 0 is not a whole number >= 1" in problems
    assert "steps.a.needs: expected a list of step names" in problems
    assert "steps.a.retries: -1 is not a whole number >= 0" in problems
    assert "steps.a.cache: 'yes' is not true or false" in problems
    assert "steps.a.timeout: 'soon' is not a duration" in problems
    assert "steps.b: expected a mapping, found a string: write b: {notebook: b.ipynb}" in problems


def test_check_false_skips_validation(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "name: p\nsteps: {a: {notebook: missing.ipynb}}\n")
    assert load_pipeline(path, check=False).steps["a"].notebook == tmp_path / "missing.ipynb"
    with pytest.raises(InvalidPipeline, match=r"missing\.ipynb does not exist"):
        load_pipeline(path)


# -- validation --------------------------------------------------------------------------------


def test_the_example_pipeline_is_valid(project: Path) -> None:
    p = load_pipeline(project)
    validate(p)
    validate(p, cron="0 3 * * *")


def test_a_cycle_is_named(tmp_path: Path) -> None:
    for name in ("prepare", "train", "report"):
        write_notebook(tmp_path / f"{name}.ipynb", "pass")
    path = write_yaml(
        tmp_path,
        """\
        name: p
        steps:
          report: {notebook: report.ipynb, needs: [train]}
          prepare: {notebook: prepare.ipynb, needs: [train]}
          train: {notebook: train.ipynb, needs: [prepare]}
        """,
    )
    problem = only_problem(path)
    assert "the steps form a cycle: prepare -> train -> prepare" in problem
    assert "Remove one of these needs" in problem
    p = load_pipeline(path, check=False)
    with pytest.raises(JMKUsageError, match="prepare -> train -> prepare"):
        topological_order(p)


def test_a_longer_cycle_runs_in_dependency_order(tmp_path: Path) -> None:
    for name in "abc":
        write_notebook(tmp_path / f"{name}.ipynb", "pass")
    # b needs a, c needs b, a needs c: a runs before b, b before c, c before a.
    path = write_yaml(
        tmp_path,
        "name: p\nsteps:\n  a: {notebook: a.ipynb, needs: [c]}\n  b: {notebook: b.ipynb, needs: [a]}\n"
        "  c: {notebook: c.ipynb, needs: [b]}\n",
    )
    assert "cycle: a -> b -> c -> a" in only_problem(path)


def test_a_step_that_needs_itself(tmp_path: Path) -> None:
    write_notebook(tmp_path / "a.ipynb", "pass")
    path = write_yaml(tmp_path, "name: p\nsteps: {a: {notebook: a.ipynb, needs: [a]}}\n")
    assert "cycle: a -> a" in only_problem(path)


def test_a_need_that_is_not_a_step(tmp_path: Path) -> None:
    write_notebook(tmp_path / "a.ipynb", "pass")
    write_notebook(tmp_path / "prepare.ipynb", "pass")
    path = write_yaml(tmp_path, "name: p\nsteps:\n  prepare: {notebook: prepare.ipynb}\n  a: {notebook: a.ipynb, needs: [prepar]}\n")
    problem = only_problem(path)
    assert problem.startswith("steps.a.needs: 'prepar' is not a step of this pipeline (did you mean 'prepare'?)")
    assert "Steps: prepare, a." in problem
    with pytest.raises(JMKUsageError, match="needs 'prepar', which is not a step"):
        topological_order(load_pipeline(path, check=False))


def _two_steps(tmp_path: Path, template: str, *, needs: str = "[prepare]", parameters: str = "{lr: 0.1}") -> Path:
    write_notebook(tmp_path / "prepare.ipynb", "output('features_uri', 's3://x')")
    write_notebook(tmp_path / "train.ipynb", "pass", parameters="x = 1")
    return write_yaml(
        tmp_path,
        f"""\
        name: p
        parameters: {parameters}
        steps:
          prepare: {{notebook: prepare.ipynb}}
          train:
            notebook: train.ipynb
            needs: {needs}
            parameters: {{x: "{template}"}}
        """,
    )


def test_a_template_of_an_undeclared_pipeline_parameter(tmp_path: Path) -> None:
    problem = only_problem(_two_steps(tmp_path, "{{ parameters.lrr }}"))
    assert problem.startswith("steps.train.parameters.x: {{ parameters.lrr }} refers to the pipeline parameter 'lrr'")
    assert "(did you mean 'lr'?). Declared: lr." in problem
    assert "Declare it under parameters:" in problem


def test_a_template_of_a_step_that_does_not_exist(tmp_path: Path) -> None:
    problem = only_problem(_two_steps(tmp_path, "{{ steps.prep.outputs.features_uri }}"))
    assert "refers to the step 'prep', which does not exist (did you mean 'prepare'?)" in problem


def test_a_template_of_a_step_that_is_not_upstream(tmp_path: Path) -> None:
    problem = only_problem(_two_steps(tmp_path, "{{ steps.prepare.outputs.features_uri }}", needs="[]"))
    assert "reads an output of 'prepare', which 'train' does not depend on" in problem
    assert "add prepare to the needs of train" in problem


def test_a_template_of_an_output_never_published(tmp_path: Path) -> None:
    problem = only_problem(_two_steps(tmp_path, "{{ steps.prepare.outputs.feature_uri }}"))
    assert "the notebook of 'prepare' (prepare.ipynb) never publishes 'feature_uri'" in problem
    assert "(did you mean 'features_uri'?). It publishes: features_uri." in problem
    assert "Call output('feature_uri', value)" in problem


def test_an_unknown_template_form(tmp_path: Path) -> None:
    problem = only_problem(_two_steps(tmp_path, "{{ params.lr }}"))
    assert "{{ params.lr }} is not a template this package knows" in problem


def test_outputs_of_a_transitive_upstream_are_allowed(project: Path) -> None:
    p = load_pipeline(project)  # evaluate needs train only, and reads prepare's rows
    assert "prepare" in upstream(p, "evaluate")


def test_a_non_literal_output_name_skips_the_check(tmp_path: Path) -> None:
    path = _two_steps(tmp_path, "{{ steps.prepare.outputs.anything }}")
    write_notebook(tmp_path / "prepare.ipynb", "for k in ['a', 'b']:\n    output(k, 1)")
    load_pipeline(path)  # no problem: prepare's outputs cannot be known


def test_a_missing_notebook(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "name: p\nsteps: {a: {notebook: nb/a.ipynb}}\n")
    problem = only_problem(path)
    assert problem.startswith("steps.a.notebook: nb/a.ipynb does not exist")
    assert f"relative to the pipeline file's folder, {tmp_path}" in problem


@pytest.mark.parametrize(
    ("content", "reason"),
    [("not json", "does not appear to be JSON"), ('{"cells": 1, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}', "")],
)
def test_a_file_that_is_not_a_notebook(tmp_path: Path, content: str, reason: str) -> None:
    (tmp_path / "a.ipynb").write_text(content)
    path = write_yaml(tmp_path, "name: p\nsteps: {a: {notebook: a.ipynb}}\n")
    problem = only_problem(path)
    assert problem.startswith(f"steps.a.notebook: {tmp_path / 'a.ipynb'} is not a valid notebook (")
    assert reason in problem and "save it as a notebook (.ipynb)" in problem


def test_a_notebook_with_small_schema_slips_is_accepted(tmp_path: Path) -> None:
    # papermill runs it (nbformat only logs schema errors when reading): no false alarm.
    nb = new_notebook(cells=[new_code_cell("lr = 1", metadata={"tags": ["parameters"]})])
    nb.metadata["kernelspec"] = {"name": "python3"}  # display_name missing
    (tmp_path / "a.ipynb").write_text(json.dumps(nb))
    path = write_yaml(tmp_path, "name: p\nsteps: {a: {notebook: a.ipynb, parameters: {lr: 2}}}\n")
    assert load_pipeline(path).steps["a"].parameters == {"lr": 2}


def test_parameters_for_a_notebook_without_a_parameters_cell(tmp_path: Path) -> None:
    write_notebook(tmp_path / "a.ipynb", "lr = 0.1")
    path = write_yaml(tmp_path, "name: p\nsteps: {a: {notebook: a.ipynb, parameters: {lr: 1, x: 2}}}\n")
    problem = only_problem(path)
    assert "the step passes parameters (lr, x) but a.ipynb has no cell tagged 'parameters'" in problem
    assert "give that cell the tag 'parameters'" in problem


def test_a_parameter_the_notebook_does_not_assign(tmp_path: Path) -> None:
    write_notebook(tmp_path / "a.ipynb", "pass", parameters="learning_rate = 0.1\nepochs = 3")
    path = write_yaml(tmp_path, "name: p\nsteps: {a: {notebook: a.ipynb, parameters: {learning_rte: 1, epochs: 5}}}\n")
    problem = only_problem(path)
    assert problem.startswith("steps.a.parameters.learning_rte: the parameters cell of a.ipynb does not assign")
    assert "(did you mean 'learning_rate'?). It assigns: learning_rate, epochs." in problem


def test_a_parameters_cell_that_is_not_python(tmp_path: Path) -> None:
    write_notebook(tmp_path / "a.ipynb", "pass", parameters="lr = = 1")
    path = write_yaml(tmp_path, "name: p\nsteps: {a: {notebook: a.ipynb, parameters: {lr: 1}}}\n")
    assert "the parameters cell of" in only_problem(path) and "is not valid Python (line 1" in only_problem(path)


def test_a_bad_cron(project: Path) -> None:
    p = load_pipeline(project)
    with pytest.raises(InvalidPipeline) as info:
        validate(p, cron="0 25 * * *")
    assert info.value.problems == ["schedule: invalid value '0 25 * * *': hour field '25': 25 is above the maximum (hour: 0-23)"]
    validate(p, cron="@daily")


def test_bad_resources(tmp_path: Path) -> None:
    write_notebook(tmp_path / "a.ipynb", "pass")
    path = write_yaml(tmp_path, "name: p\nsteps: {a: {notebook: a.ipynb, resources: {cpu: lots, memory: 16GB, gpus: 1.5}}}\n")
    problems = problems_of(path)
    assert problems == [
        "steps.a.resources.cpu 'lots' is not a CPU amount. Use cores (2, 0.5) or millicores (500m)",
        "steps.a.resources.memory '16GB' is not a memory size. Use a Kubernetes quantity such as 512Mi, 16Gi or 2G",
        "steps.a.resources.gpus '1.5' is not a number of GPUs. Use a whole number: gpus: 1",
    ]


def test_bad_retries_on_a_step_built_directly(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "a.ipynb", "pass")
    p = Pipeline("p", {"a": Step("a", notebook, retries=-2, timeout=0)})
    with pytest.raises(InvalidPipeline) as info:
        validate(p)
    assert info.value.problems == [
        "steps.a.retries: -2 is not a whole number >= 0: write e.g. retries: 2",
        "steps.a.timeout: 0 is not a positive number of seconds",
    ]


@pytest.mark.parametrize(("name", "suggestion"), [("Train_Model", "train-model"), ("a" * 41, "a" * 40), ("-x", "x")])
def test_step_names_must_be_dns_labels(tmp_path: Path, name: str, suggestion: str) -> None:
    write_notebook(tmp_path / "a.ipynb", "pass")
    path = write_yaml(tmp_path, f"name: p\nsteps: {{'{name}': {{notebook: a.ipynb}}}}\n")
    problem = only_problem(path)
    assert problem.startswith(f"steps.{name}: the step name {name!r} must be lowercase letters, digits and '-'")
    assert "at most 40 characters" in problem and "Kubernetes Job names and MLflow run names" in problem
    assert problem.endswith(f"try {suggestion!r}")


def test_a_valid_40_character_step_name(tmp_path: Path) -> None:
    write_notebook(tmp_path / "a.ipynb", "pass")
    load_pipeline(write_yaml(tmp_path, f"name: p\nsteps: {{{'a' * 39}1: {{notebook: a.ipynb}}}}\n"))


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    write_notebook(tmp_path / "prepare.ipynb", "output('features_uri', 1)")
    write_notebook(tmp_path / "train.ipynb", "pass", parameters="lr = 0.1")
    path = write_yaml(
        tmp_path,
        """\
        name: p
        parameters: {lr: 0.1}
        stepz: 1
        steps:
          prepare: {notebook: prepare.ipynb, needs: [train], cach: false}
          train:
            notebook: train.ipynb
            needs: [prepare, ghost]
            resources: {memory: lots}
            parameters:
              lr: "{{ parameters.rate }}"
              epochs: "{{ steps.prepare.outputs.nope }}"
          Eval: {notebook: missing.ipynb}
        """,
    )
    with pytest.raises(InvalidPipeline) as info:
        load_pipeline(path, overrides={"batch": "3"})
    problems = info.value.problems
    message = str(info.value)
    expected = [
        "stepz: unknown key (did you mean 'steps'?)",
        "-p batch: the pipeline declares no parameter 'batch'",
        "steps.prepare.cach: unknown key (did you mean 'cache'?)",
        "steps.train.resources.memory 'lots' is not a memory size",
        "steps.train.needs: 'ghost' is not a step of this pipeline",
        "steps.train.parameters.epochs: the parameters cell of train.ipynb does not assign 'epochs'",
        "steps.Eval: the step name 'Eval' must be lowercase",
        "steps.Eval.notebook: missing.ipynb does not exist",
        "steps.train.parameters.lr: {{ parameters.rate }} refers to the pipeline parameter 'rate'",
        "steps.train.parameters.epochs: {{ steps.prepare.outputs.nope }}: the notebook of 'prepare'",
        "steps.prepare.needs: the steps form a cycle: prepare -> train -> prepare",
    ]
    for start in expected:
        assert sum(problem.startswith(start) for problem in problems) == 1, (start, problems)
        assert f"\n  - {start}" in message
    assert len(problems) == len(expected)
    assert message.startswith(f"The pipeline 'p' ({path}) is invalid ({len(expected)} problems):")


# -- the graph ---------------------------------------------------------------------------------


def _graph(tmp_path: Path, steps: dict[str, list[str]]) -> Pipeline:
    notebook = write_notebook(tmp_path / "a.ipynb", "pass")
    data = {"name": "g", "steps": {name: {"notebook": str(notebook), "needs": needs} for name, needs in steps.items()}}
    return pipeline_from_dict(data, tmp_path)


def test_topological_order_keeps_the_file_order_among_ready_steps(tmp_path: Path) -> None:
    p = _graph(tmp_path, {"report": ["train", "eval"], "train": ["prep"], "eval": ["train"], "prep": [], "lint": []})
    assert topological_order(p) == ["prep", "train", "eval", "report", "lint"]
    p = _graph(tmp_path, {"c": [], "b": [], "a": ["c"]})
    assert topological_order(p) == ["c", "b", "a"]


def test_upstream_is_transitive(tmp_path: Path) -> None:
    p = _graph(tmp_path, {"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": ["c", "d"]})
    assert upstream(p, "e") == {"a", "b", "c", "d"}
    assert upstream(p, "c") == {"a", "b"}
    assert upstream(p, "a") == set()
    with pytest.raises(JMKUsageError, match="No step 'f'"):
        upstream(p, "f")


# -- templates ---------------------------------------------------------------------------------


def test_resolve_parameters_whole_values_keep_their_type(project: Path) -> None:
    p = load_pipeline(project, overrides={"lr": "0.5", "run": "7"})
    outputs = {"prepare": {"features_uri": "s3://f/1", "rows": 120}, "train": {"auc": 0.9}}
    assert resolve_parameters(p.steps["train"], p.parameters, outputs) == {"features_uri": "s3://f/1", "lr": 0.5}
    resolved = resolve_parameters(p.steps["evaluate"], p.parameters, outputs)
    assert resolved == {"report_uri": "s3://reports/7/120.html"}


def test_resolve_parameters_in_lists_and_dicts(tmp_path: Path) -> None:
    step = Step(
        "s",
        tmp_path / "s.ipynb",
        parameters={
            "layers": "{{parameters.layers}}",
            "cfg": {"lr": "{{ parameters.lr }}", "tags": ["run-{{ parameters.lr }}", 3]},
            "flag": "{{ steps.a.outputs.ok }}",
            "plain": "no {template} here",
            "n": 5,
        },
    )
    resolved = resolve_parameters(step, {"layers": [64, 128], "lr": 0.01}, {"a": {"ok": False}})
    assert resolved == {
        "layers": [64, 128],
        "cfg": {"lr": 0.01, "tags": ["run-0.01", 3]},
        "flag": False,
        "plain": "no {template} here",
        "n": 5,
    }


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ parameters.nope }}", "undeclared pipeline parameter"),
        ("x-{{ steps.b.outputs.y }}", "no outputs of step 'b' are available"),
        ("{{ steps.a.outputs.missing }}", "step 'a' did not publish 'missing' \\(it published: ok\\)"),
        ("{{ whatever }}", "not a template this package knows"),
    ],
)
def test_resolve_parameters_unknown_reference(tmp_path: Path, template: str, message: str) -> None:
    step = Step("s", tmp_path / "s.ipynb", parameters={"x": template})
    with pytest.raises(JMKUsageError, match=message):
        resolve_parameters(step, {"lr": 1}, {"a": {"ok": True}})


# -- notebook analysis -------------------------------------------------------------------------


def test_notebook_parameters(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "a.ipynb",
        "later = 1",
        parameters=(
            "%matplotlib inline\nlr = 0.01\nepochs: int = 3\nname: str\nlayers = [64, -1]\n"
            "data = load()\na, b = 1, 'x'\nc = d = None\nimport os\nif True:\n    hidden = 1\n"
        ),
    )
    assert notebook_parameters(path) == {
        "lr": 0.01,
        "epochs": 3,
        "name": None,
        "layers": [64, -1],
        "data": None,
        "a": 1,
        "b": "x",
        "c": None,
        "d": None,
    }
    assert notebook_parameters(write_notebook(tmp_path / "b.ipynb", "lr = 1")) is None


def test_notebook_parameters_caches_but_sees_a_changed_file(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "a.ipynb", parameters="lr = 1")
    assert notebook_parameters(path) == {"lr": 1}
    write_notebook(path, parameters="lr = 2\nextra_parameter = 'more'")
    assert notebook_parameters(path) == {"lr": 2, "extra_parameter": "more"}


def test_notebook_outputs(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "a.ipynb",
        "import jupyter_mlflow_k8s as j\nfrom jupyter_mlflow_k8s import output as publish\n!ls\nx = %time 1",
        "output('a', 1)\njmk.output('b', 2)\njupyter_mlflow_k8s.output(name='c', value=3)",
        "j.output('d', 4)\npublish('e', 5)\nif x:\n    output('f', x)",
        "%%train --gpus 1\noutput('g', 7)",
        "widget.output('not_this', 1)\nprint(output)",
        parameters="x = 1",
    )
    assert notebook_outputs(path) == {"a", "b", "c", "d", "e", "f", "g"}
    assert notebook_outputs(write_notebook(tmp_path / "none.ipynb", "x = 1")) == set()


@pytest.mark.parametrize("code", ["output(name, 1)", "output(f'm_{i}', 1)", "jmk.output(*pair)", "def f(:\n  pass"])
def test_notebook_outputs_unknowable(tmp_path: Path, code: str) -> None:
    path = write_notebook(tmp_path / "a.ipynb", "output('known', 1)", code)
    assert notebook_outputs(path) is None


def test_notebook_analysis_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(JMKUsageError, match="does not exist"):
        notebook_outputs(tmp_path / "nope.ipynb")
    with pytest.raises(JMKUsageError, match="does not exist"):
        notebook_parameters(tmp_path / "nope.ipynb")


# -- step outputs ------------------------------------------------------------------------------


def test_output_appends_json_lines_and_read_outputs_keeps_the_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "outputs.jsonl"
    monkeypatch.setenv(OUTPUTS_ENV, str(target))
    output("auc", 0.91)
    output("uri", "s3://b/x")
    output("auc", 0.93)
    output("cfg", {"layers": [1, 2], "ok": True, "none": None})
    lines = target.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"name": "auc", "value": 0.91},
        {"name": "uri", "value": "s3://b/x"},
        {"name": "auc", "value": 0.93},
        {"name": "cfg", "value": {"layers": [1, 2], "ok": True, "none": None}},
    ]
    with target.open("a") as stream:
        stream.write('{"name": "torn", "val')  # a step killed mid-write
    assert read_outputs(target) == {"auc": 0.93, "uri": "s3://b/x", "cfg": {"layers": [1, 2], "ok": True, "none": None}}
    assert read_outputs(tmp_path / "missing.jsonl") == {}


def test_output_outside_a_pipeline_run_prints(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.delenv(OUTPUTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    output("auc", 0.91)
    assert capsys.readouterr().out == "[jmk] output auc = 0.91 (not in a pipeline run)\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["2x", "a-b", "", "a b"])
def test_output_names_must_be_identifiers(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OUTPUTS_ENV, raising=False)
    with pytest.raises(JMKUsageError, match="is not a Python identifier"):
        output(name, 1)


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", math.nan])
def test_output_values_must_be_json(value: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "outputs.jsonl"
    monkeypatch.setenv(OUTPUTS_ENV, str(target))
    with pytest.raises(JMKUsageError, match="is not JSON-serializable") as info:
        output("model", value)
    assert "Store big things" in str(info.value) and "publish their URI" in str(info.value)
    assert not target.exists()


def test_the_package_exports_output_without_importing_it_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = (
        "import sys, jupyter_mlflow_k8s as jmk\n"
        "assert 'jupyter_mlflow_k8s.pipelines.outputs' not in sys.modules\n"
        "jmk.output('x', [1])\n"
    )
    env_file = tmp_path / "out.jsonl"
    monkeypatch.setenv(OUTPUTS_ENV, str(env_file))
    subprocess.run([sys.executable, "-c", code], check=True)
    assert read_outputs(env_file) == {"x": [1]}
    assert jupyter_mlflow_k8s.output.__module__ == "jupyter_mlflow_k8s"


# -- the Python API ----------------------------------------------------------------------------


def test_the_python_api_builds_what_the_yaml_does(project: Path) -> None:
    p = pipeline("churn", parameters={"data_uri": "s3://data/churn.csv", "lr": 0.01, "run": "nightly"}, max_parallel=2,
                 base_dir=project.parent)
    p.step("prepare", "nb/prepare.ipynb", parameters={"data_uri": "{{ parameters.data_uri }}"})
    p.step(
        "train",
        Path("nb/train.ipynb"),
        needs=["prepare"],
        parameters={"features_uri": "{{ steps.prepare.outputs.features_uri }}", "lr": "{{parameters.lr}}"},
        resources=Resources(cpu="2", memory="8Gi", gpus=1),
        backend="kubernetes",
        image="ghcr.io/acme/train:1",
        retries=2,
        cache=False,
        timeout="2h",
    )
    p.step("evaluate", project.parent / "nb" / "evaluate.ipynb", needs="train",
           parameters={"report_uri": "s3://reports/{{ parameters.run }}/{{ steps.prepare.outputs.rows }}.html"})
    from_yaml = load_pipeline(project)
    built = p.build()
    assert built == dataclasses.replace(from_yaml, source=None)
    assert p.build(overrides={"lr": "0.2"}).parameters["lr"] == 0.2
    import yaml

    written = project.parent / "written.yaml"
    written.write_text(yaml.safe_dump(p.to_dict()))
    assert dataclasses.replace(load_pipeline(written), source=None) == built


def test_the_python_api_validates(tmp_path: Path) -> None:
    p = pipeline("p", base_dir=tmp_path).step("a", "missing.ipynb").step("b", "missing.ipynb", needs=["z"])
    with pytest.raises(InvalidPipeline) as info:
        p.build()
    assert len(info.value.problems) == 3 and "'z' is not a step" in str(info.value)
    assert str(info.value).startswith("The pipeline 'p' is invalid (3 problems):")
    with pytest.raises(JMKUsageError, match="already has a step 'a'"):
        p.step("a", "other.ipynb")
    assert p.build(check=False).steps["b"].needs == ("z",)


def test_the_python_api_resources_as_a_mapping(tmp_path: Path) -> None:
    write_notebook(tmp_path / "a.ipynb", "pass")
    built = pipeline("p", base_dir=tmp_path).step("a", "a.ipynb", resources={"gpus": 1, "cpu": 0.5}).build()
    assert built.steps["a"].resources == Resources(cpu="0.5", gpus=1)
    with pytest.raises(InvalidPipeline, match=r"steps\.a\.resources\.gpus 'two'"):
        pipeline("p", base_dir=tmp_path).step("a", "a.ipynb", resources={"gpus": "two"}).build()
