"""``POST /invocations`` fuzzed against real inference servers (a real process, a registered model).

Random scoring-protocol shapes, NaN/Infinity and huge numbers, deep nesting, wrong content types
and bodies over ``--max-body-mb``: every answer is a 2xx or a 4xx with a message, never a 5xx and
never a hang (the client's timeout); the server still answers afterwards.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterator

import pytest
import requests
from fuzzing import bounded, tried
from hypothesis import example, given
from hypothesis import strategies as st

import tests.test_serving_server as serving
from tests.serving_fixtures import FEATURES, Served

pytestmark = pytest.mark.slow
TIMEOUT = 30.0  # seconds one answer may take; past it the case counts as a hang
MAX_BODY_MB = 1


@pytest.fixture(scope="module")
def env(mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri,
            "JMK_STATE_DIR": str(tmp_path_factory.mktemp("fuzz-serving") / "state")}


def drained(server: serving.Server) -> serving.Server:
    """Keep reading the server's output: MLflow logs a warning for many bad requests, and a full pipe
    would block the server's model thread in ``write`` (a hang of the test harness, not of the server)."""
    assert server.process.stdout is not None
    threading.Thread(target=server.process.stdout.read, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def frame_server(served_model: Served, env: dict[str, str]) -> Iterator[serving.Server]:
    running = drained(serving.Server(served_model.uri("1"), "--max-body-mb", str(MAX_BODY_MB), "--max-wait-ms", "2",
                                     env=env))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def tensor_server(served_tensor_model: Served, env: dict[str, str]) -> Iterator[serving.Server]:
    running = drained(serving.Server(served_tensor_model.uri(), "--max-body-mb", str(MAX_BODY_MB), env=env))
    yield running
    running.stop()


# -- what is sent ----------------------------------------------------------------------------------

numbers = st.one_of(st.floats(), st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                    st.integers(min_value=2**63, max_value=10**400), st.sampled_from([1e308, -0.0, 5e-324, 2**64]))
leaves = st.one_of(numbers, st.none(), st.booleans(), st.text(max_size=10))
anything = st.recursive(leaves, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
    st.one_of(st.sampled_from(FEATURES), st.text(max_size=8)), inner, max_size=5), max_leaves=25)
rows = st.lists(st.lists(st.one_of(numbers, leaves), min_size=0, max_size=6), min_size=0, max_size=5)
columns = st.one_of(st.just(list(FEATURES)), st.permutations(FEATURES).map(list),
                    st.lists(st.one_of(st.sampled_from(FEATURES), st.text(max_size=5), st.integers(), st.none(),
                                       st.lists(st.integers(), max_size=2)), max_size=6))
records = st.lists(st.one_of(st.dictionaries(st.sampled_from(FEATURES), st.one_of(numbers, leaves), min_size=3),
                             anything), max_size=5)
documents = st.one_of(
    st.fixed_dictionaries({"dataframe_split": st.fixed_dictionaries(
        {"columns": columns, "data": st.one_of(rows, anything)}, optional={"index": anything})}),
    st.fixed_dictionaries({"dataframe_records": records}),
    st.fixed_dictionaries({"instances": st.one_of(records, rows, anything)}),
    st.fixed_dictionaries({"inputs": st.one_of(rows, anything, st.dictionaries(st.sampled_from(FEATURES),
                                                                               st.lists(numbers, max_size=4)))}),
    st.dictionaries(st.sampled_from(["dataframe_split", "dataframe_records", "instances", "inputs", "params",
                                     "x"]), anything, max_size=3),
    anything,
)
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "text/csv",
                 "text/plain", "application/octet-stream", "", "application/json; format=pandas-split",
                 "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", "text/csv; charset=latin-1"]


def deep(levels: int, key: str | None = "inputs") -> bytes:
    """``levels`` nested arrays (inside ``{key: ...}`` unless key is None)."""
    nested = "[" * levels + "1" + "]" * levels
    return (nested if key is None else f'{{"{key}": {nested}}}').encode()


bodies = st.one_of(
    documents.map(lambda d: json.dumps(d).encode()),  # NaN and Infinity as JavaScript writes them
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.lists(st.lists(st.one_of(numbers.map(str), st.text(max_size=5)), max_size=5), max_size=5).map(
        lambda table: "\n".join([",".join(FEATURES)] + [",".join(r) for r in table]).encode()),
    st.sampled_from([deep(10_000), deep(10_000, None), deep(100), b'{"instances": ' + b"[" * 100_000,
                     b'{"inputs": [[1e999, -1e999, NaN, Infinity]]}', b"{" * 10_000]),
)


def post(server: serving.Server, body: bytes, content_type: str) -> requests.Response:
    return requests.post(f"{server.url}/invocations", data=body, headers={"Content-Type": content_type},
                         timeout=TIMEOUT)


def check_answer(server: serving.Server, body: bytes, content_type: str) -> None:
    tried("/invocations")
    response = post(server, body, content_type)
    what = f"{content_type!r} {body[:200]!r}"
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:500]}"
    assert "Traceback" not in response.text, what
    if response.status_code >= 400:
        answer = response.json()
        assert isinstance(answer["message"], str) and answer["message"].strip(), what
        assert "stack_trace" not in answer, what
    else:
        predictions = response.json()
        assert isinstance(predictions, dict), what


split_nan = json.dumps({"dataframe_split": {"columns": list(FEATURES), "data": [[math.nan, 1.0, 2.0, 3.0]]}})


@bounded(2000)
@given(body=bodies, content_type=st.one_of(st.sampled_from(CONTENT_TYPES), st.text(  # what a header can carry
    alphabet=st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=20).map(str.strip)))
@example(body=deep(10_000), content_type="application/json")  # deeper than the json module reads
@example(body=deep(10_000), content_type="text/csv")
@example(body=b'{"dataframe_records": []}', content_type="\x80")  # a header byte that is not UTF-8
@example(body=split_nan.encode(), content_type="application/json")  # MLflow's answer carried a stack trace
@example(body=json.dumps({"dataframe_split": {"columns": [[1], "a", "b", "c"], "data": [[1, 2, 3, 4]]}}).encode(),
         content_type="application/json")  # an unhashable column name
@example(body=json.dumps({"dataframe_split": {"columns": list(FEATURES), "data": [[10**400, 1, 2, 3]]}}).encode(),
         content_type="application/json")
def test_frame_model_invocations_never_answer_500(frame_server: serving.Server, body: bytes,
                                                  content_type: str) -> None:
    check_answer(frame_server, body, content_type)


@bounded(800)
@given(body=bodies, content_type=st.sampled_from([*CONTENT_TYPES[:3], "text/csv"]))
@example(body=deep(10_000), content_type="application/json")
@example(body=json.dumps({"instances": [[10**400, 1, 2, 3]]}).encode(), content_type="application/json")
@example(body=json.dumps({"inputs": [[[[1.0]]]] * 3}).encode(), content_type="application/json")
@example(body=b'{"dataframe_records": []}', content_type="APPLICATION/JSON")  # MLflow's 415 was plain text
def test_tensor_model_invocations_never_answer_500(tensor_server: serving.Server, body: bytes,
                                                   content_type: str) -> None:
    check_answer(tensor_server, body, content_type)


def test_a_body_over_the_limit_is_a_413_that_says_what_to_do(frame_server: serving.Server,
                                                             served_model: Served) -> None:
    over = json.dumps({"dataframe_split": {"columns": list(FEATURES),
                                           "data": [[5.1, 3.5, 1.4, 0.2]] * 60_000}}).encode()
    assert len(over) > MAX_BODY_MB * 2**20
    for content_type in ("application/json", "text/csv", "text/plain"):
        tried("/invocations")
        response = post(frame_server, over, content_type)
        assert response.status_code == 413, response.text[:300]
        assert "--max-body-mb" in response.json()["message"]
    tried("/invocations")
    fine = post(frame_server, json.dumps(serving.split(served_model.frame.head(3))).encode(), "application/json")
    assert fine.status_code == 200 and len(fine.json()["predictions"]) == 3  # the server goes on answering

