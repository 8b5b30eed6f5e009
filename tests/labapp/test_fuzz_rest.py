"""The sidebar's REST API, fuzzed through a real Jupyter server: bodies, query parameters, path segments.

One server (pytest-jupyter) answers every example; the examples are sent from a worker thread with
a plain HTTP client, so paths go out exactly as generated (``..``, ``%2e%2e``, long ids) while the
server's event loop runs. Every answer must be JSON: a 4xx with a message, or a 2xx where the
input happened to be valid; never a 5xx, never a traceback, never a hang (the client's timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from fuzzing import bounded, tried
from hypothesis import example, given
from hypothesis import strategies as st
from traitlets.config import Config

TIMEOUT = 30.0  # seconds a single answer may take; past it the case counts as a hang


@pytest.fixture
def jp_server_config(state_dir: Path) -> Config:
    return Config({"ServerApp": {"jpserver_extensions": {"jupyter_mlflow_k8s.labapp": True}}})


# -- what is sent ----------------------------------------------------------------------------------

RAW_SEGMENTS = ["..", ".", "%2e%2e", "%2E%2E", "%2e%2e%2f%2e%2e", "..%2f..%2fetc%2fpasswd", "%2F", "%00", "%",
                "%zz", "%ff%fe", "~", "a..b", "-", "_", ".hidden", "%20", "%0a", "null", "0", "-1", "9" * 400,
                "a" * 3000, "%E2%80%AE", "%F0%9F%98%80", "CON", "models:", "runs%3A%2F%2F"]
segments = st.one_of(
    st.sampled_from(RAW_SEGMENTS),
    st.text(min_size=1, max_size=40).map(lambda s: urllib.parse.quote(s, safe="")),
    st.text(alphabet=st.characters(codec="ascii", exclude_characters="/?#"), min_size=1, max_size=20)
    .map(lambda s: urllib.parse.quote(s, safe=".-_~%")),
)
query_values = st.one_of(
    st.sampled_from(["", "0", "-1", "1", "100", "1e309", "nan", "inf", "-inf", "0x10", "1_000", "٣", "9" * 5000,
                     str(2**63), "0.2", "true", "null", "[]", "{}", "'", "\"", "attributes.status = 'FINISHED'",
                     "metrics.loss < 1", "params.lr = '0.1' AND tags.x = 'y'", "a=b", "; DROP TABLE runs",
                     "start_time DESC", "metrics.`loss` ASC", "..", "../../etc", "eyJvZmZzZXQiOiAxMH0=", "!!!"]),
    st.text(max_size=60),
    st.integers().map(str),
    st.floats().map(str),
)
params = st.lists(st.tuples(st.sampled_from(["limit", "tail", "offset", "interval", "filter", "order_by",
                                             "experiment_ids", "page_token", "max_results", "path", "x", ""]),
                            query_values), max_size=4)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**30, max_value=10**400),
              st.floats(), st.text(max_size=20)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10)
bodies = st.one_of(
    st.none(),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"version": st.one_of(json_values, st.sampled_from(["1", " 2 ", "٣", "²", "9" * 5000,
                                                                                "-1", "1.0", "0", "01"]))})
    .map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.sampled_from([b"{", b"[" * 100_000, b"NaN", b'{"version": NaN}', b"\xff\xfe", b'{"version": "1"}' * 3]),
)

# (method, path template): every route of handlers.ROUTES; {} are path segments
ROUTES = [("GET", "status"), ("GET", "openapi.yaml"), ("GET", "jobs"), ("GET", "jobs/{}"), ("GET", "jobs/{}/log"),
          ("GET", "jobs/{}/log/stream"), ("POST", "jobs/{}/cancel"), ("GET", "runs"), ("GET", "runs/{}"),
          ("GET", "runs/{}/metrics/{}"), ("GET", "runs/{}/metrics/{}/{}"), ("GET", "runs/{}/artifacts"),
          ("GET", "models"), ("GET", "models/{}/versions"), ("PUT", "models/{}/aliases/{}"),
          ("DELETE", "models/{}/aliases/{}"), ("GET", "endpoints"), ("GET", "endpoints/{}/metrics"),
          ("GET", "endpoints/{}/metrics/stream"), ("GET", "{}"), ("GET", "{}/{}/{}"),
          ("GET", "jobs/{}/resources")]
ROUTES.append(("GET", "presets"))
ROUTES.append(("GET", "triggers"))
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes | None]:
    """(method, path below /jmk/api/, body): a route with fuzzed segments and query, sometimes another method."""
    method, template = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(METHODS))
    path = template.format(*(draw(segments) for _ in range(template.count("{}"))))
    query = urllib.parse.urlencode(draw(params))
    return method, path + (f"?{query}" if query else ""), draw(bodies)


# -- what must come back ---------------------------------------------------------------------------


class Client:
    """Plain HTTP/1.1 from a worker thread, with the server's token, one connection per request."""

    def __init__(self, port: int, base_url: str, token: str) -> None:
        self.port, self.base, self.token = port, base_url, token

    def send(self, method: str, path: str, body: bytes | None) -> tuple[int, str, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            headers = {"Authorization": f"token {self.token}", "Content-Type": "application/json"}
            # an event stream that opened (a valid endpoint) would run on: its status and headers are enough
            connection.request(method, f"{self.base}jmk/api/{path}", body=body, headers=headers)
            response = connection.getresponse()
            stream = response.getheader("Content-Type", "").startswith("text/event-stream")
            data = b"" if stream else response.read()
            return response.status, response.getheader("Content-Type", ""), data
        finally:
            connection.close()


def check_answer(client: Client, method: str, path: str, body: bytes | None) -> None:
    tried("REST API")
    status, content_type, data = client.send(method, path, body)
    where = f"{method} /jmk/api/{path[:200]}"
    assert status < 500, f"{where}: {status} {data[:500]!r}"
    assert b"Traceback" not in data, f"{where}: a traceback in the answer"
    if status >= 400:
        assert content_type.startswith("application/json"), f"{where}: {status} {content_type} {data[:200]!r}"
        message = json.loads(data)["message"]
        assert isinstance(message, str) and message.strip(), f"{where}: {status} without a message"
    elif status != 204 and not content_type.startswith(("text/event-stream", "application/yaml")):
        json.loads(data)


async def test_the_rest_api_answers_every_fuzzed_request_with_json_and_never_a_500(
        jp_fetch: Any, jp_serverapp: Any, jp_http_port: int, jp_base_url: str, served_model: Any,
        mlflow_uri: str) -> None:
    # jp_fetch: pytest-jupyter's HTTP server listens only for a test that asks for its client
    client = Client(jp_http_port, jp_base_url, jp_serverapp.identity_provider.token)

    @bounded(4000)
    @given(request=requests())
    @example(request=("PUT", f"models/{served_model.name}/aliases/fuzz", b'{"version": "\\u0663"}'))  # an Arabic 3
    @example(request=("PUT", f"models/{served_model.name}/aliases/fuzz", b'{"version": "\\u00b2"}'))  # superscript 2
    @example(request=("PUT", f"models/{served_model.name}/aliases/fuzz", b'{"version": "' + b"9" * 5000 + b'"}'))
    @example(request=("PUT", f"models/{served_model.name}/aliases/fuzz", b'{"version": "1"}'))
    @example(request=("GET", "jobs/..%2f..%2fetc/log", None))
    @example(request=("GET", "runs/%2e%2e/artifacts?path=../../../etc", None))
    @example(request=("GET", "jobs?limit=" + "9" * 5000, None))
    @example(request=("GET", "endpoints/x/metrics/stream?interval=nan", None))
    @example(request=("PUT", "models/m/aliases/a", b"[" * 100_000))
    @example(request=("GET", "jobs/" + "9" * 300, None))  # longer than a file name
    @example(request=("GET", "runs?page_token=%C2%80", None))  # not ASCII: MLflow's base64 fails
    def fuzz(request: tuple[str, str, bytes | None]) -> None:
        check_answer(client, *request)

    try:
        await asyncio.get_running_loop().run_in_executor(None, fuzz)
    finally:  # the examples set alias "fuzz" on the session's served model: other tests list its aliases
        from mlflow.tracking import MlflowClient

        with contextlib.suppress(Exception):
            MlflowClient(mlflow_uri).delete_registered_model_alias(served_model.name, "fuzz")
