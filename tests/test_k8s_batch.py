"""``jmk batch-predict --backend kubernetes`` on the test cluster: each shard a Job on the real node.

The files and the outputs are in a bucket of a moto S3 server the pods reach; the model is the
scikit-learn ``iris-serving`` registered in a tracking server the pods reach (the one endpoint pods
load from). Run with ``flock /tmp/jmk-cluster.lock`` around pytest (one node per machine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import stop_jobs
from k8s_fixtures import KubeTarget

from jupyter_mlflow_k8s.backends.kubernetes import ClusterWatch
from jupyter_mlflow_k8s.batch import BatchFailed, BatchRequest, BatchService

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
    for key in ("kubeconfig", "namespace", "image", "pods_share_filesystem"):
        config.pop(key, None)
    shell.__dict__.pop("_jmk_service", None)
    ClusterWatch.stop_all()


def test_two_shards_as_jobs_on_the_node_equal_the_models_predict_and_rerun_skips(
    k8s_batch: BatchService, k8s_s3_bucket: str, k8s_served_model: Any, k8s_mlflow_server: str
) -> None:
    import mlflow
    import pandas as pd
    import s3fs

    fs = s3fs.S3FileSystem()
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
    mlflow.set_tracking_uri(k8s_mlflow_server)
    want = mlflow.pyfunc.load_model(uri).predict(frame[list(k8s_served_model.frame.columns)])
    assert got.set_index("id")["prediction"].sort_index().tolist() == list(want)
    again = k8s_batch.run(request, say=print)
    assert [s["state"] for s in again.shards] == ["skipped", "skipped"]


def test_bad_rows_past_the_threshold_fail_with_the_count_on_the_node(
    k8s_batch: BatchService, k8s_s3_bucket: str, k8s_served_model: Any
) -> None:
    import s3fs

    fs = s3fs.S3FileSystem()
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
