"""``%%train --sweep --backend kubernetes`` on the test cluster: every trial a Job on the real node.

The sweep's controller is its own process (``python -m jupyter_mlflow_k8s.sweeps``): it rebuilds the job
service from the kernel's configuration saved in the sweep's folder, so these tests also show that the
namespace, image, kubeconfig and pod settings of the fixture reach the trials' Jobs through that file.
How many trials ran at once is read twice: from the trials' own job records (created to finished), and
from a watch of the namespace's Jobs that counts the Jobs not yet ended (a Job ends with its Complete or
Failed condition, or its deletion; the controller launches the next trial only once it has seen one end).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from helpers import wait_for
from k8s_fixtures import KubeTarget, pod_processes
from mlflow.tracking import MlflowClient
from test_k8s_backend import k8s_shell, service  # noqa: F401 (k8s_shell is a fixture)
from test_k8s_distributed import nothing_left
from test_sweeps import GRID, GRID_CELL, _max_overlap, check_grid_runs_and_listing
from traitlets.config import Config

from jupyter_mlflow_k8s.backends.kubernetes import KubernetesBackend
from jupyter_mlflow_k8s.backends.kubernetes.manifests import JOB_ID_LABEL
from jupyter_mlflow_k8s.magics.train import sweeps_for
from jupyter_mlflow_k8s.models import JobState
from jupyter_mlflow_k8s.records import JobStore
from jupyter_mlflow_k8s.sweeps.service import controller_config


def assert_same_backend(kernel: KubernetesBackend, saved: dict[str, Any]) -> None:
    """A backend built from the saved config (as the controller builds it) is configured as the kernel's."""
    rebuilt = KubernetesBackend(kernel.store, config=Config(json.loads(json.dumps(saved))))
    for name in KubernetesBackend.class_trait_names(config=True):
        assert getattr(rebuilt, name) == getattr(kernel, name), name


def test_the_controller_gets_the_kernels_backend_settings_whatever_form_they_were_written_in(tmp_path: Path) -> None:
    config = Config()
    backend = config.KubernetesBackend
    backend.kubeconfig, backend.namespace, backend.image = str(tmp_path / "kubeconfig"), "team-a", "reg/runner:1"
    backend.pods_share_filesystem, backend.image_pull_failure_seconds = False, 3.0
    backend.labels.update({"team": "vision"})  # LazyConfigValues: applied to the trait's value when it is built
    backend.tolerations.append({"key": "gpu", "operator": "Exists"})
    backend.image_pull_secrets.extend(["regcred"])
    config.LocalBackend.gpu_ids.extend(["0"])
    kernel = KubernetesBackend(JobStore(tmp_path / "state"), config=config)
    assert kernel.labels == {"team": "vision"}

    saved = controller_config(config, kernel)

    assert saved["KubernetesBackend"]["labels"] == {"team": "vision"}
    assert saved["LocalBackend"]["gpu_ids"] == ["0"]
    assert_same_backend(kernel, saved)


class JobWatch:
    """The namespace's Jobs as the API server tells them, from a watch: which ever existed, the most unended."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.batch = kubernetes.client.BatchV1Api(api)
        self.namespace = namespace
        self.seen: set[str] = set()
        self.unended: set[str] = set()
        self.most = 0
        self.error: Exception | None = None  # why the watch stopped early
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> JobWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            stream = kubernetes.watch.Watch()
            try:
                for event in stream.stream(self.batch.list_namespaced_job, self.namespace, resource_version=version,
                                           timeout_seconds=2):
                    self._see(event["type"], event["object"])
                    version = event["object"].metadata.resource_version
                    if self._stop.is_set():
                        break
            except kubernetes.client.ApiException as exc:
                if exc.status != 410:  # an expired version: list again from now
                    self.error = exc
                    return
                version = ""
            finally:
                stream.stop()

    def _see(self, kind: str, job: Any) -> None:
        job_id = (job.metadata.labels or {}).get(JOB_ID_LABEL)
        if not job_id:
            return
        self.seen.add(job_id)
        ended = {c.type for c in job.status.conditions or [] if c.status == "True"} & {"Complete", "Failed"}
        if kind == "DELETED" or ended or job.metadata.deletion_timestamp:
            self.unended.discard(job_id)
        else:
            self.unended.add(job_id)
        self.most = max(self.most, len(self.unended))


@pytest.fixture
def job_watch(k8s_api: Any, k8s_namespace: str) -> Iterator[JobWatch]:
    with JobWatch(k8s_api, k8s_namespace) as watch:
        yield watch


@pytest.mark.k8s
@pytest.mark.slow
def test_the_grid_on_kubernetes_returns_its_optimum_with_at_most_parallel_jobs_at_once(
    k8s_shell: Any, k8s_cluster: KubeTarget, k8s_api: Any, k8s_namespace: str, job_watch: JobWatch,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    k8s_shell.user_ns["offset"] = 7
    k8s_shell.run_cell_magic(
        "train", f'--sweep "{GRID}" --objective score:min --backend kubernetes --parallel 2 --experiment sweep-k8s',
        GRID_CELL,
    )  # fmt: skip
    out = capsys.readouterr().out
    assert k8s_shell.user_ns["model"] == {"a": 2, "b": 20, "offset": 7}  # the best trial's names came back
    frame = k8s_shell.user_ns["sweep"]
    assert len(frame) == 6 and set(frame["state"]) == {"succeeded"}
    assert list(zip(frame["a"], frame["b"], strict=True)) == [(1, 10), (1, 20), (1, 30), (2, 10), (2, 20), (2, 30)]
    assert frame.loc[frame["best"]].index.tolist() == [4] and frame.loc[4, "score"] == 0.0
    assert "best trial 4 (a=2, b=20) score=0" in out
    record = sweeps_for(k8s_shell).list()[0]
    assert record["state"] == "succeeded" and record["backend"] == "kubernetes"

    # The controller process ran the trials with the kernel's Kubernetes configuration, read back from its file.
    config = json.loads((sweeps_for(k8s_shell).store.folder(record["sweep_id"]) / "config.json").read_text())
    assert config["traitlets"]["KubernetesBackend"]["namespace"] == k8s_namespace
    assert_same_backend(service(k8s_shell).backend("kubernetes"), config["traitlets"])
    jobs = [service(k8s_shell).get(job_id) for job_id in frame["job_id"]]
    assert {job.spec.backend for job in jobs} == {"kubernetes"} and {job.state for job in jobs} == {JobState.SUCCEEDED}
    assert {job.backend_ref["namespace"] for job in jobs} == {k8s_namespace}
    batch = kubernetes.client.BatchV1Api(k8s_api)
    images = {batch.read_namespaced_job(job.backend_ref["name"], k8s_namespace).spec.template.spec.containers[0].image
              for job in jobs}  # fmt: skip
    assert images == {k8s_cluster.pod_image}

    # At most two trials' Jobs at once: from the trials' records, and as the API server showed them. A record's
    # `started` is the container's start as the pod tells it, in whole seconds (truncated): it can fall before
    # the end of the trial the controller waited for. `created` (the trial launched) is before its Job exists.
    assert _max_overlap([{"started": job.created, "finished": job.finished} for job in jobs]) <= 2
    assert job_watch.error is None and job_watch.seen == set(frame["job_id"])
    assert job_watch.most == 2, "the watch saw more (or fewer) unended Jobs at once than --parallel 2"

    check_grid_runs_and_listing(k8s_shell, record, frame)


@pytest.mark.k8s
@pytest.mark.slow
def test_cancel_of_a_sweep_on_kubernetes_deletes_every_trials_job_and_pods(
    k8s_shell: Any, k8s_cluster: KubeTarget, k8s_api: Any, k8s_namespace: str, job_watch: JobWatch,  # noqa: F811
) -> None:
    handle = k8s_shell.run_cell_magic(
        "train", '--sweep "x=[1, 2, 3, 4]" --objective y:min --backend kubernetes --parallel 2 --async',
        "import time\nprint('up', flush=True)\ntime.sleep(600)\ny = x\n",
    )  # fmt: skip
    sweeps = sweeps_for(k8s_shell)
    wait_for(lambda: sum(t["state"] == "running" for t in sweeps.get(handle.sweep_id)["trials"]) == 2,
             timeout=120, interval=0.2)  # fmt: skip
    if k8s_cluster.local:
        wait_for(lambda: len({p.pid for p in pod_processes(f"{k8s_namespace}/")}) >= 2, timeout=60)

    handle.cancel()

    record = sweeps.get(handle.sweep_id)
    assert record["state"] == "cancelled"
    assert [t["state"] for t in record["trials"]] == ["cancelled", "cancelled"]  # the other two never started
    for trial in record["trials"]:
        job = service(k8s_shell).get(trial["job_id"])
        assert job.state is JobState.CANCELLED
        wait_for(lambda job=job: nothing_left(k8s_api, k8s_namespace, job), timeout=120, interval=0.2)
    assert job_watch.error is None and job_watch.seen == {t["job_id"] for t in record["trials"]}  # no Job of a later trial was created
    if k8s_cluster.local:
        wait_for(lambda: not pod_processes(f"{k8s_namespace}/"), timeout=60)
    client = MlflowClient(record["tracking_uri"])
    assert client.get_run(record["parent_run_id"]).info.status == "KILLED"
    assert {client.get_run(t["run_id"]).info.status for t in record["trials"]} == {"KILLED"}
    wait_for(lambda: not sweeps.store.controller_alive(record), timeout=30)
