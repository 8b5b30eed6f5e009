"""The small rules in util/: durations, K=V pairs, safe names, process checks; and lazy registries."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jupyter_mlflow_k8s.errors import JMKUsageError
from jupyter_mlflow_k8s.exceptions import UnknownPlugin
from jupyter_mlflow_k8s.registry import Registry, load_reference
from jupyter_mlflow_k8s.util.durations import clock_duration, duration_seconds, elapsed_text, seconds_text, short_age
from jupyter_mlflow_k8s.util.names import dns_label, dns_slug, is_identifier, label_value
from jupyter_mlflow_k8s.util.pairs import parse_pairs
from jupyter_mlflow_k8s.util.processes import pid_exists, process_alive, process_started, track_child, wait_child


@pytest.mark.parametrize(("value", "seconds"), [(900, 900.0), ("900", 900.0), ("90s", 90.0), ("15m", 900.0),
                                                ("2h", 7200.0), ("1d", 86400.0), ("1.5 h", 5400.0), (0.5, 0.5)])
def test_durations_read(value: object, seconds: float) -> None:
    assert duration_seconds(value) == seconds


@pytest.mark.parametrize("value", [0, -5, "0", "soon", "5w", "", None, True, [], "1h30m", 10**400, "9" * 400 + "d",
                                   float("inf"), float("nan")])
def test_what_is_not_a_duration(value: object) -> None:
    assert duration_seconds(value) is None


def test_durations_and_ages_written() -> None:
    assert seconds_text(3.24) == "3.2 s"
    assert elapsed_text(None) == "" and elapsed_text(10.0, 13.25) == "3.2 s"
    assert elapsed_text(time.time() - 1).endswith(" s")
    assert [short_age(s) for s in (45, 300, 3 * 3600, 2 * 86400)] == ["45s", "5m", "3h", "2d"]
    assert [clock_duration(s) for s in (None, 4.25, 185, 7380, 93600)] == ["", "4.2s", "3m 05s", "2h 03m", "1d 02h"]


def test_pairs() -> None:
    assert parse_pairs(["lr=0.1", " epochs =5", "expr=a=b ", "empty="], "-p") == {
        "lr": "0.1", "epochs": "5", "expr": "a=b ", "empty": ""}
    assert parse_pairs(None, "-p") == {}
    with pytest.raises(JMKUsageError, match=r"^--env 'NOEQUALS' is not KEY=VALUE\. Write it as --env lr=0\.01\.$"):
        parse_pairs(["NOEQUALS"], "--env")
    with pytest.raises(JMKUsageError, match="is not KEY=VALUE"):
        parse_pairs(["=1"], "-p")
    with pytest.raises(JMKUsageError, match="the name must be a Python identifier"):
        parse_pairs(["2x=1"], "--param", identifiers=True)
    assert parse_pairs(["x-y=1"], "--tag") == {"x-y": "1"}


def test_names() -> None:
    assert dns_slug("Churn Model (v2)!") == "churn-model-v2"
    assert dns_slug("Café ü") == "cafe-u" and dns_slug("!!!") == ""
    assert dns_slug("a" * 50 + "-b", 51) == "a" * 50
    long_a, long_b = "x" * 70 + "a", "x" * 70 + "b"
    assert len(dns_label(long_a)) == 63 and dns_label(long_a) != dns_label(long_b)
    assert dns_label("2024 model", letter_first=True, fallback="model") == "m-2024-model"
    assert dns_label("???", fallback="model") == "model"
    assert label_value("Training v2.ipynb") == "Training-v2.ipynb"
    assert len(label_value("n" * 100)) == 63
    assert is_identifier("learning_rate") and not is_identifier("class") and not is_identifier("2x")


def test_process_checks() -> None:
    me = os.getpid()
    started = process_started(me)
    assert started is not None and process_alive(me, started) and process_alive(me, None)
    assert not process_alive(me, started - 100), "same pid, another start: a reused pid"
    assert not process_alive(None, None) and pid_exists(me)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    track_child(child)
    wait_child(child.pid, 30)
    assert child.returncode == 0 and not process_alive(child.pid, None)


def test_registry_resolves_built_ins_when_first_asked() -> None:
    registry: Registry[type] = Registry("widget", "jmk.test.none", {"ordered": "collections:OrderedDict"})
    assert registry.names() == ["ordered"]
    from collections import OrderedDict

    assert registry.get("ordered") is OrderedDict
    registry.register("mine", dict)
    assert registry.get("mine") is dict
    with pytest.raises(UnknownPlugin, match="Unknown widget 'nope'; known: mine, ordered"):
        registry.get("nope")
    assert load_reference("os.path:join") is os.path.join
    with pytest.raises(ValueError, match="module:attribute"):
        load_reference("os.path.join")


def test_the_backend_base_imports_no_backend() -> None:
    code = ("import sys, jupyter_mlflow_k8s.backends.base as b; "
            "assert 'jupyter_mlflow_k8s.backends.kubernetes' not in sys.modules; "
            "assert 'jupyter_mlflow_k8s.backends.local' not in sys.modules; "
            "assert b.backends.get('local').__name__ == 'LocalBackend'; "
            "assert b.backends.get('pipeline').__name__ == 'PipelineStepBackend'; "
            "assert b.backends.get('kubernetes').__name__ == 'KubernetesBackend'; "
            "assert {'kubernetes', 'local', 'pipeline'} <= set(b.backends.names()); "
            "import jupyter_mlflow_k8s.storage as s; assert s.storages.get('s3').__name__ == 'S3Storage'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
