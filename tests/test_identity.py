"""One user everywhere: the MLflow run's user tag and the Kubernetes Job's user label and name agree.

Under JupyterHub every single-user server runs as the same login (``jovyan``); the hub's user name
(``JUPYTERHUB_USER``) is who the user is. The tracking code once preferred the login, the backend
the hub's name, so a run said ``jovyan`` while its Job said ``alice``.
"""

from __future__ import annotations

import getpass

import pytest

from jupyter_mlflow_k8s import tracking
from jupyter_mlflow_k8s.backends import kubernetes as backend
from jupyter_mlflow_k8s.backends.kubernetes.manifests import USER_LABEL, job_labels, job_name
from jupyter_mlflow_k8s.models import JobRecord, JobSpec
from jupyter_mlflow_k8s.util.identity import current_user


def _login(name: str | None):  # type: ignore[no-untyped-def]
    def getuser() -> str:
        if name is None:
            raise KeyError("getpwuid(): uid not found: 1000790000")
        return name

    return getuser


def test_under_jupyterhub_the_run_and_the_job_name_the_hub_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(getpass, "getuser", _login("jovyan"))
    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    spec = JobSpec(code="x = 1\n")
    assert tracking.run_tags("abcd1234", spec)["mlflow.user"] == "alice"
    record = JobRecord(job_id="abcd1234", spec=spec)
    user = backend.current_user()  # what the backend labels and names its Jobs with
    assert job_labels(record, user)[USER_LABEL] == "alice"
    assert job_name("abcd1234", user) == "jmk-alice-abcd1234"


def test_outside_jupyterhub_the_login_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(getpass, "getuser", _login("jane"))
    monkeypatch.delenv("JUPYTERHUB_USER", raising=False)
    assert current_user() == "jane"
    assert tracking.run_tags("abcd1234", JobSpec(code="x = 1\n"))["mlflow.user"] == "jane"


def test_a_container_uid_without_a_passwd_entry_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(getpass, "getuser", _login(None))
    monkeypatch.delenv("JUPYTERHUB_USER", raising=False)
    assert current_user() == "unknown"
