"""Fuzzed user input that never leaves the machine: ``pipeline.yaml`` files and ``%%train`` flag lines.

Every case either gives a pipeline (or a job spec) or the package's usage error with a message;
any other exception is a bug the user would see as a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzzing import bounded, tried
from hypothesis import example, given
from hypothesis import strategies as st
from IPython.core.error import UsageError

from jupyter_mlflow_k8s.exceptions import JMKUsageError
from jupyter_mlflow_k8s.magics.common import parse_flags, service_for
from jupyter_mlflow_k8s.models import JobSpec
from jupyter_mlflow_k8s.pipelines.spec import RESOURCE_KEYS, STEP_KEYS, TOP_LEVEL_KEYS, load_pipeline

# -- values YAML can hold --------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**18, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["2h", "15m", "-1", "1e309", "0", "8Gi", "500m", "prepare.ipynb", "../../etc/passwd",
                     "{{ parameters.lr }}", "{{ steps.a.outputs.x }}", "{{", "}}", "nan", "~", "1d", "-3h"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), inner, max_size=4),
                      max_leaves=12)
names = st.one_of(st.sampled_from(["prepare", "train", "a", "b", "x" * 300, "a b", "../up", "étape", ""]),
                  st.text(max_size=12), st.integers())


def step_dicts() -> st.SearchStrategy[dict[Any, Any]]:
    """Steps that mostly look like steps: known keys (and a few unknown ones) with any values."""
    known = st.sampled_from([*sorted(STEP_KEYS), "notebok", "need", "resource"])
    special = {
        "notebook": st.one_of(st.sampled_from(["a.ipynb", "missing.ipynb", "", "/", "..", "~/x.ipynb"]), values),
        "needs": st.one_of(st.lists(names, max_size=3), values),
        "resources": st.one_of(st.dictionaries(st.sampled_from([*sorted(RESOURCE_KEYS), "gpu", "mem"]), values,
                                               max_size=4), values),
    }
    return st.dictionaries(known, values, max_size=6).flatmap(
        lambda d: st.fixed_dictionaries({k: special.get(k, st.just(v)) for k, v in d.items()}))


pipelines = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.text(max_size=20), values),
    "parameters": st.one_of(st.dictionaries(st.text(max_size=10), values, max_size=4), values),
    "max_parallel": st.one_of(st.integers(), values),
    "steps": st.one_of(st.dictionaries(names, st.one_of(step_dicts(), values), max_size=4), values),
    "extra": values,
}).map(lambda d: {k: v for k, v in d.items() if k in TOP_LEVEL_KEYS or k == "extra"})

yaml_fragments = st.sampled_from([
    "name: p\nsteps:\n  a: &a {notebook: a.ipynb, needs: *a}\n",
    "a: &a [*a]\n",
    "name: &n [*n, *n]\nsteps: {a: {notebook: *n}}\n",
    "!!python/object/apply:os.system ['true']\n",
    "name: !!binary aGVsbG8=\nsteps: {a: {notebook: !!binary aGVsbG8=}}\n",
    "name: p\nsteps: !!set {a, b}\n",
    "? [a, b]\n: 1\n",
    "name: p\nname: q\n",
    "steps:\n  a: {notebook: a.ipynb, timeout: 1e999}\n",
    "<<: {name: p}\nsteps: {a: {notebook: a.ipynb}}\n",
    "name: p\nsteps: {a: {notebook: a.ipynb, parameters: {lr: {{ parameters.lr }}}}}\n",
    "\t- \x00\n",
    "%YAML 9.9\n---\nname: p\n",
    "---\nname: p\n---\nname: q\n",
])


def documents() -> st.SearchStrategy[str]:
    """Text for ``pipeline.yaml``: pipeline-shaped YAML, tricky YAML, and plain random text."""
    dumped = st.one_of(pipelines, values).map(lambda d: yaml.safe_dump(d, allow_unicode=True))
    return st.one_of(dumped, yaml_fragments, st.text(max_size=200),
                     st.lists(st.sampled_from(["name:", "steps:", " ", "\n", "  a:", "-", "[", "{", "}", "]", ":",
                                               "&x", "*x", "!!str", "'", '"', "notebook: a.ipynb", "#", "\t"]),
                              max_size=30).map("".join))


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
) + "name: p\nsteps: {s: {notebook: a.ipynb, parameters: {p: *i}}}\n"


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-pipeline")
    notebook = {"cells": [{"id": "p", "cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "lr = 0.1\n",
                           "outputs": [], "execution_count": None}],
                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    import json

    (folder / "a.ipynb").write_text(json.dumps(notebook))
    return folder


@bounded(3000)
@given(text=documents())
@example(text="a: &a [*a]\n")  # a recursive alias: the structure refers to itself
@example(text="name: p\nsteps:\n  a: &a {notebook: a.ipynb, needs: *a}\n")
@example(text=BILLION_LAUGHS)  # 9**9 leaves through aliases: read as shared references, not expanded
@example(text="name: p\nsteps: {a: {notebook: a.ipynb, timeout: 1e999}}\n")
@example(text="name: p\nsteps: " + "[" * 5000)  # nesting deeper than PyYAML's recursive reader goes
@example(text="name: p\nparameters: &p {x: *p}\nsteps: {a: {notebook: a.ipynb}}\n")
def test_pipeline_yaml_loads_or_says_what_is_wrong(pipeline_dir: Path, text: str) -> None:
    tried("pipeline.yaml")
    path = pipeline_dir / "pipeline.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass") if _encodable(text) else path.write_bytes(
        text.encode("utf-8", "replace"))
    try:
        load_pipeline(path)
    except JMKUsageError as exc:
        assert str(exc).strip(), "a usage error without a message"
        assert "Traceback" not in str(exc)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- %%train flag lines ----------------------------------------------------------------------------

FLAGS = ["--backend", "--gpus", "--cpu", "--memory", "--image", "--env", "--param", "--tag", "--experiment",
         "--run-name", "--out", "--no-out", "--timeout", "--register", "--model", "--input-example", "--async",
         "--preset", "--secret", "--volume", "--retries", "-h", "--help", "--unknown", "-", "--", "--gpu"]
TOKENS = st.one_of(
    st.sampled_from(FLAGS),
    st.sampled_from(["1", "0", "-1", "-0", "1.5", "1e309", "nan", "inf", str(10**30), "9" * 5000, "=", "a=b",
                     "lr=0.1", "lr=", "=1", "x=[1,", "x={'a': (1,)}", "x=__import__('os')", "A=1=2", "2h", "-5m",
                     "pvc:claim:/data", "pvc:c:/d:ro", "pvc::", "local", "kubernetes", "k8s", "x", "y,z", "x,,",
                     "'", '"', "'unbalanced", '"a b"', "'a b'", "\\", "é", "ünïcödé=1", "\x00", "\t", "mnist-clf",
                     "-" * 300, "a" * 300, "16Gi", "500m", "-2Gi"]),
    st.text(max_size=12),
    st.integers().map(str),
    st.builds(lambda f, v: f"{f}={v}", st.sampled_from(FLAGS), st.text(max_size=8)),
)
lines = st.one_of(st.lists(TOKENS, max_size=8).map(" ".join), st.text(max_size=80))
CELL = "x = 1\ny = x + 1\n"


def spec_of(magics: Any, line: str) -> JobSpec:
    """The job spec ``%%train LINE`` builds for a small cell: the magic's own parsing, nothing submitted."""
    args = parse_flags(magics.train, line)
    return magics._spec(args, CELL)  # type: ignore[no-any-return]


@pytest.fixture
def train_magics(shell: Any) -> Any:
    return shell.magics_manager.registry["TrainMagics"]


@bounded(1500)
@given(line=lines)
@example(line="--gpus " + "9" * 5000)  # more digits than int() reads
@example(line="--gpus ٣")  # a digit that is not 0-9
@example(line="--retries 1e309")
@example(line="--timeout 1e309")
@example(line="--cpu '")
@example(line="--help")
@example(line="--param x=\x00")
def test_train_flag_lines_give_a_spec_or_a_usage_error(train_magics: Any, line: str) -> None:
    tried("%%train flags")
    try:
        spec = spec_of(train_magics, line)
    except (UsageError, JMKUsageError) as exc:
        assert str(exc).strip(), f"a usage error without a message for {line!r}"
    else:
        assert isinstance(spec, JobSpec)
        assert set(spec.outputs) <= {"x", "y"}


def test_a_bad_flag_line_in_a_notebook_shows_the_message_without_a_traceback(shell: Any,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    for line, said in (("--gpus -1", "--gpus"), ("--timeout soon", "is not a duration"),
                       ("--param 'unbalanced", "Close the quote")):
        tried("%%train flags")
        result = shell.run_cell(f"%%train {line}\nx = 1\n")
        out = capsys.readouterr()
        assert isinstance(result.error_in_exec, UsageError), (line, result.error_in_exec)
        assert said in str(result.error_in_exec)
        assert "Traceback" not in out.out + out.err
        assert "UsageError" in out.out + out.err
    assert "x" not in shell.user_ns  # nothing ran
    assert not service_for(shell).list()  # nothing was submitted


@pytest.mark.parametrize("line", ["job logs 'abc", "runs 'mnist", "serve 'models:/m/1", "model show 'm",
                                  "pipeline run 'p.yaml"])
def test_every_magic_says_an_unbalanced_quote_is_one(shell: Any, capsys: pytest.CaptureFixture[str],
                                                     line: str) -> None:
    result = shell.run_cell(f"%{line}")
    out = capsys.readouterr()
    assert isinstance(result.error_in_exec, UsageError), (line, result.error_in_exec)
    assert "No closing quotation" in str(result.error_in_exec) and "Traceback" not in out.out + out.err
