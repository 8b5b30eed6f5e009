"""``jmk batch-predict --backend kubernetes`` on the test cluster: each shard a Job on the real node.

The files and the outputs are in a bucket of a moto S3 server the pods reach; the models are the
scikit-learn ``iris-serving`` and the batch tests' ``2 a + b`` (tests/batch_model.py, which hangs on
a marked row while its pod has ``JMK_TEST_BATCH_HANG``), registered in a tracking server the pods
reach. The test node (Kubernetes 1.20) has no Indexed Jobs: the shards run one Job each there, the
fallback the backend chooses; with the Indexed form forced, the one Job is created, its API server
drops ``completionMode``, and its pods, without a completion index, fail saying so. Run with ``flock /tmp/jmk-cluster.lock`` around pytest (one node per machine).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import mlflow_tracking, stop_jobs
from k8s_fixtures import KubeTarget
from test_batch import ROWS, frames

from jupyter_mlflow_k8s.backends.kubernetes import ClusterWatch
from jupyter_mlflow_k8s.backends.kubernetes.manifests import JOBS
from jupyter_mlflow_k8s.batch import BatchFailed, BatchRequest, BatchService
from jupyter_mlflow_k8s.models import JobSpec

pytestmark = pytest.mark.k8s


@pytest.fixture
def k8s_batch(shell: Any, state_dir: Path, k8s_cluster: KubeTarget, k8s_namespace: str, k8s_mlflow_server: str,
              monkeypatch: pytest.MonkeyPatch) -> Any:
    """A batch service whose jobs go to this test's namespace, in the runner image, tracked where pods reach."""
    from jupyter_mlflow_k8s.magics.common import service_for

    config = shell.config.KubernetesBackend
    config.kubeconfig = str(k8s_cluster.kubeconfig)
    config.namespace = k8s_namespace
    config.image = k8s_cluster.pod_image
    config.pods_share_filesystem = False
    monkeypatch.setenv("MLFLOW_TRACKING_URI", k8s_mlflow_server)
    shell.__dict__.pop("_jmk_service", None)
    yield BatchService(service_for(shell))
    stop_jobs(state_dir, shell.config)
    for key in ("kubeconfig", "namespace", "image", "pods_share_filesystem", "env", "distributed_form"):
        config.pop(key, None)
    shell.__dict__.pop("_jmk_service", None)
    ClusterWatch.stop_all()


@pytest.fixture(scope="session")
def k8s_batch_model(k8s_mlflow_server: str) -> Iterator[str]:
    """``models:/batch-twice@champion`` (tests/batch_model.py) registered in the server the pods load from."""
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    with mlflow_tracking(k8s_mlflow_server):
        mlflow.set_experiment("batch-tests")
        example = pd.DataFrame({"a": [1.0, 2.0], "b": [0.5, 0.25]})
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(name="model", python_model=str(Path(__file__).with_name("batch_model.py")),
                                           input_example=example, registered_model_name="batch-twice")
        MlflowClient(k8s_mlflow_server).set_registered_model_alias("batch-twice", "champion",
                                                                   str(info.registered_model_version))
    yield "models:/batch-twice@champion"


def test_two_shards_as_jobs_on_the_node_equal_the_models_predict_and_rerun_skips(
    k8s_batch: BatchService, k8s_s3_bucket: str, k8s_served_model: Any, k8s_mlflow_server: str, k8s_api: Any
) -> None:
    import mlflow
    import pandas as pd
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # this test's AWS variables
    frame = k8s_served_model.frame.assign(id=range(len(k8s_served_model.frame)))
    for number in range(4):
        fs.pipe(f"{k8s_s3_bucket}/in/f{number}.parquet", frame.iloc[number::4].to_parquet(index=False))
    uri = f"models:/{k8s_served_model.name}@prod"
    request = BatchRequest.parse(uri, f"s3://{k8s_s3_bucket}/in/*.parquet", f"s3://{k8s_s3_bucket}/out/", shards=2,
                                 backend="kubernetes", retries=1)
    report = k8s_batch.run(request, say=print)

    assert report.state == "succeeded" and report.rows == len(frame) and report.errors == 0
    fs.invalidate_cache()
    got = pd.concat([pd.read_parquet(fs.open(p)) for p in sorted(fs.glob(f"{k8s_s3_bucket}/out/part-*.parquet"))])
    assert sorted(got["id"]) == list(range(len(frame)))
    with mlflow_tracking(k8s_mlflow_server):
        want = mlflow.pyfunc.load_model(uri).predict(frame[list(k8s_served_model.frame.columns)])
    assert got.set_index("id")["prediction"].sort_index().tolist() == list(want)
    again = k8s_batch.run(request, say=print)
    assert [s["state"] for s in again.shards] == ["skipped", "skipped"]

    import kubernetes

    minor = int(kubernetes.client.VersionApi(k8s_api).get_code().minor.rstrip("+"))
    form = k8s_batch.jobs.backend("kubernetes").batch_form(JobSpec(code="", backend="kubernetes", retries=1))
    assert report.form == "jobs"
    if minor < 21:  # the test node: the API server drops completionMode, so the fallback is chosen
        assert form == (JOBS, False)


def test_bad_rows_past_the_threshold_fail_with_the_count_on_the_node(
    k8s_batch: BatchService, k8s_s3_bucket: str, k8s_served_model: Any
) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # this test's AWS variables
    frame = k8s_served_model.frame.head(200).copy()
    frame.loc[frame.index[:10], "petal_width"] = None  # 5%
    for number in range(4):
        fs.pipe(f"{k8s_s3_bucket}/in/f{number}.parquet", frame.iloc[number::4].to_parquet(index=False))
    request = BatchRequest.parse(f"models:/{k8s_served_model.name}@prod", f"s3://{k8s_s3_bucket}/in/",
                                 f"s3://{k8s_s3_bucket}/out/", shards=2, backend="kubernetes", error_threshold="1%")
    with pytest.raises(BatchFailed, match=r"10 of 200 rows were bad \(5.00%\), more than --error-threshold 0.01"):
        k8s_batch.run(request, say=print)
    fs.invalidate_cache()
    assert len(fs.glob(f"{k8s_s3_bucket}/out/_quarantine/*.csv")) == 4


def test_a_shard_whose_pod_is_deleted_half_way_then_a_rerun_skips_the_finished_one(
    shell: Any, k8s_batch: BatchService, k8s_s3_bucket: str, k8s_batch_model: str, k8s_api: Any
) -> None:
    import kubernetes
    import pandas as pd
    import s3fs

    from jupyter_mlflow_k8s.magics.common import service_for

    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # this test's AWS variables
    parts = frames(hang_in_last=True)  # f3.csv holds a == 777: its shard hangs there while the pod has the variable
    for number, frame in enumerate(parts):
        fs.pipe(f"{k8s_s3_bucket}/in/f{number}.csv", frame.to_csv(index=False).encode())
    out = f"{k8s_s3_bucket}/out"
    request = BatchRequest.parse(k8s_batch_model, f"s3://{k8s_s3_bucket}/in/*.csv", f"s3://{out}/", shards=2,
                                 backend="kubernetes")
    shell.config.KubernetesBackend.env = {"JMK_TEST_BATCH_HANG": "1"}
    shell.__dict__.pop("_jmk_service", None)
    hanging = BatchService(service_for(shell))
    failure: list[BaseException] = []

    def first_run() -> None:
        try:
            hanging.run(request, say=print)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=first_run)
    thread.start()
    deadline = time.monotonic() + 400

    def wait_for(path: str) -> bool:
        while time.monotonic() < deadline:
            fs.invalidate_cache()
            if fs.exists(path):
                return True
            time.sleep(0.5)
        return False

    assert wait_for(f"{out}/_jmk_batch/plan.json")
    plan = json.loads(fs.cat(f"{out}/_jmk_batch/plan.json"))
    hung = next(i for i, files in enumerate(plan["shards"]) if 3 in files)
    other, first_of_hung = 1 - hung, plan["shards"][hung][0]
    marker = f"{out}/_jmk_batch/shard-{other:05d}/_SUCCESS"
    assert wait_for(marker), "the other shard never finished"
    assert wait_for(f"{out}/part-{first_of_hung:05d}.csv"), "the hung shard wrote nothing before its marked row"
    assert not fs.exists(f"{out}/_jmk_batch/shard-{hung:05d}/_SUCCESS")
    record = next(r for r in hanging.jobs.list() if r.spec.tags.get("jmk.batch.shard") == str(hung))
    # Killed half way from outside the notebook: its Job deleted, and with it the running pod.
    kubernetes.client.BatchV1Api(k8s_api).delete_namespaced_job(
        record.backend_ref["name"], record.backend_ref["namespace"], propagation_policy="Background")
    thread.join(180)
    assert not thread.is_alive(), "the batch did not notice its shard's Job was gone"
    assert failure and isinstance(failure[0], BatchFailed), failure
    assert f"shard {hung}" in str(failure[0]) and "Run the same command again" in str(failure[0])
    finished = fs.cat(marker)

    shell.config.KubernetesBackend.pop("env")
    shell.__dict__.pop("_jmk_service", None)
    report = BatchService(service_for(shell)).run(request, say=print)
    assert report.shards[other]["state"] == "skipped" and report.shards[hung]["state"] == "succeeded"
    fs.invalidate_cache()
    assert fs.cat(marker) == finished  # the finished shard did not run again
    got = pd.concat([pd.read_csv(fs.open(p)) for p in sorted(fs.glob(f"{out}/part-*.csv"))])
    assert sorted(got["id"]) == list(range(4 * ROWS))  # no row twice, none missing
    whole = pd.concat(parts).set_index("id").sort_index()
    assert got.set_index("id")["prediction"].sort_index().tolist() == pytest.approx(
        (whole["a"] * 2 + whole["b"]).tolist())


def test_the_indexed_form_forced_on_the_node_is_one_job_of_the_unfinished_shards_whose_pods_say_why_they_fail(
    shell: Any, k8s_batch: BatchService, k8s_s3_bucket: str, k8s_served_model: Any, k8s_api: Any,
    k8s_mlflow_server: str
) -> None:
    import kubernetes
    import mlflow
    import s3fs

    from jupyter_mlflow_k8s.batch.worker import run_shard
    from jupyter_mlflow_k8s.magics.common import service_for

    minor = int(kubernetes.client.VersionApi(k8s_api).get_code().minor.rstrip("+"))
    if minor >= 21:
        pytest.skip("this API server keeps completionMode: its pods would run their shards")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # this test's AWS variables
    frame = k8s_served_model.frame.assign(id=range(len(k8s_served_model.frame)))
    for number in range(4):
        fs.pipe(f"{k8s_s3_bucket}/in/f{number}.parquet", frame.iloc[number::4].to_parquet(index=False))
    request = BatchRequest.parse(f"models:/{k8s_served_model.name}@prod", f"s3://{k8s_s3_bucket}/in/*.parquet",
                                 f"s3://{k8s_s3_bucket}/out/", shards=3, backend="kubernetes")
    shell.config.KubernetesBackend.distributed_form = "indexed"
    shell.__dict__.pop("_jmk_service", None)
    batch = BatchService(service_for(shell))
    plan = batch.plan(request, say=print)
    before = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(k8s_mlflow_server)
        run_shard(plan.output, 0)  # shard 0 finished in an earlier run (here, in this process)
    finally:
        mlflow.set_tracking_uri(before)

    with pytest.raises(BatchFailed) as caught:
        batch.run(request, say=print)
    report = caught.value.report
    assert report.form == "indexed"
    assert [s["state"] for s in report.shards] == ["skipped", "failed", "failed"]
    assert report.shards[1]["job_id"] == report.shards[2]["job_id"], "one job for both unfinished shards"
    text = str(caught.value)
    assert "2 of 3 shard(s) failed" in text and "Run the same command again" in text
    assert "no JOB_COMPLETION_INDEX" in text and "distributed_form = 'auto'" in text  # the worker's own words

    record = batch.jobs.get(report.shards[1]["job_id"])
    assert record.spec.batch_shards == (1, 2) and record.backend_ref["batch"] == "indexed"
    kept = json.loads(kubernetes.client.BatchV1Api(k8s_api).read_namespaced_job(
        record.backend_ref["name"], record.backend_ref["namespace"], _preload_content=False).data)
    assert "completionMode" not in kept["spec"]  # what a 1.20 API server does with the field
    # --retries per shard run: the whole Job may lose that many pods per shard
    assert (kept["spec"]["completions"], kept["spec"]["parallelism"], kept["spec"]["backoffLimit"]) == (
        2, 2, 2 * request.retries)
    env = {e["name"]: e.get("value") for e in kept["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["JMK_BATCH_SHARDS"] == "1,2"
    log = Path(str(record.log_path)).read_text()
    assert "no completion index (the cluster dropped the Job's completionMode)" in log
    assert any(line.startswith("[pod ") and "JOB_COMPLETION_INDEX" in line for line in log.splitlines())
    assert not fs.exists(f"{k8s_s3_bucket}/out/_jmk_batch/shard-00001/_SUCCESS")
