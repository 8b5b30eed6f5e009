"""Resource quantities, records and the log collapser."""

from __future__ import annotations

import pytest

from jupyter_mlflow_k8s.exceptions import JMKUsageError
from jupyter_mlflow_k8s.logstream import ProgressLines
from jupyter_mlflow_k8s.models import JobRecord, JobSpec, JobState, Resources, parse_cpu, parse_gpus, parse_memory


@pytest.mark.parametrize(
    ("text", "value"), [("512Mi", 512 * 2**20), ("16Gi", 16 * 2**30), ("2G", 2 * 10**9), ("1000", 1000)]
)
def test_parse_memory(text: str, value: int) -> None:
    assert parse_memory(text) == value


@pytest.mark.parametrize("text", ["lots", "16 GB", "-1Gi", "0", "Gi", "9" * 400, "9" * 320 + "Ei"])
def test_parse_memory_rejects(text: str) -> None:
    with pytest.raises(JMKUsageError, match="--memory"):
        parse_memory(text)


def test_parse_cpu_and_gpus() -> None:
    assert parse_cpu("500m") == 0.5 and parse_cpu("2") == 2.0
    assert parse_gpus("2") == 2
    for bad in ("abc", "-1", "1.5"):
        with pytest.raises(JMKUsageError, match="--gpus"):
            parse_gpus(bad)
    for bad in ("fast", "9" * 400):
        with pytest.raises(JMKUsageError, match="--cpu"):
            parse_cpu(bad)


def test_record_roundtrip() -> None:
    spec = JobSpec(code="x = 1", inputs=("a",), outputs=("x",), resources=Resources(cpu="2", memory="1Gi", gpus=1))
    record = JobRecord(job_id="abcd1234", spec=spec, state=JobState.RUNNING, gpu_ids=["0"])
    again = JobRecord.from_dict(record.to_dict())
    assert again == record
    assert JobState.CANCELLED.mlflow_status == "KILLED" and JobState.SUCCEEDED.mlflow_status == "FINISHED"


def test_progress_lines_collapse_redraws() -> None:
    lines = ProgressLines()
    assert lines.feed(b"start\n") == "start\n"
    out = "".join(lines.feed(f"\r{i:3d}%".encode()) for i in range(0, 101))
    assert out == "" and lines.current == "100%"
    assert lines.feed(b"\ndone\r\n") == "100%\ndone\n"
    assert lines.feed("caf\u00e9".encode()[:4]) == ""
    assert lines.flush() == "caf\ufffd\n"
    assert lines.flush() == ""
