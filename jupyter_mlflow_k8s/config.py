"""Configuration: traitlets configurables and the embedded defaults.

With nothing configured, jobs run locally, MLflow tracks into a SQLite file under the state
directory and payloads are stored under it too. Environment variables are read here and
nowhere else; traitlets config (``ipython_config.py``, ``jupyter_server_config.py``) wins over
them when both are given. :func:`jupyter_config` reads the Jupyter configuration files for
front doors that no Jupyter application starts (``jmk``).
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from pathlib import Path
from typing import Any

from traitlets import Dict, Float, TraitError, Unicode, default, validate
from traitlets.config import Config, Configurable

ENV_STATE_DIR = "JMK_STATE_DIR"
ENV_STORAGE_URL = "JMK_STORAGE_URL"
ENV_BACKEND = "JMK_BACKEND"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
# The sidebar's file first (JupyterHub images mount the kernels' settings there too), then our own.
CONFIG_FILE_NAMES = ("jupyter_server_config", "jupyter_mlflow_k8s_config")

log = logging.getLogger(__name__)


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


class JMKSettings(Configurable):
    """Where state, payloads and tracking live, and which backend runs jobs by default."""

    state_dir = Unicode(
        help=(
            "Directory for job records, logs, the default payload store and the default MLflow "
            "database. Env: JMK_STATE_DIR. Example: c.JMKSettings.state_dir = '/home/jovyan/.jmk'"
        ),
    ).tag(config=True)

    storage_url = Unicode(
        help=(
            "fsspec URL where payloads and results are staged, content-addressed. Default: "
            "file:// under the state directory. Env: JMK_STORAGE_URL. "
            "Example: c.JMKSettings.storage_url = 's3://team-bucket/jmk'"
        ),
    ).tag(config=True)

    tracking_uri = Unicode(
        help=(
            "MLflow tracking URI for job runs. Default: MLFLOW_TRACKING_URI, else a SQLite file "
            "under the state directory. Example: c.JMKSettings.tracking_uri = 'http://mlflow:5000'"
        ),
    ).tag(config=True)

    storage_options = Dict(
        help=(
            "Extra fsspec options for the storage URL (passed to s3fs for s3://). Credentials "
            "otherwise come from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...). "
            "Example: c.JMKSettings.storage_options = {'client_kwargs': {'endpoint_url': 'http://minio:9000'}}"
        ),
    ).tag(config=True)

    default_backend = Unicode(
        help="Backend for jobs that do not name one. Env: JMK_BACKEND. Example: 'kubernetes'",
    ).tag(config=True)

    system_metrics_interval = Float(
        5.0,
        help=(
            "Seconds between the system-metrics samples a job logs to its MLflow run (CPU, memory, disk, "
            "network; GPUs with nvidia-ml-py installed), under MLflow's names (system/cpu_utilization_percentage, "
            "...), shown in the MLflow UI's System metrics tab and the sidebar; 0 turns them off. Inside a pod, "
            "CPU and memory are the container's, against its --cpu and --memory limits. "
            "Example: c.JMKSettings.system_metrics_interval = 10"
        ),
    ).tag(config=True)

    @validate("system_metrics_interval")
    def _check_interval(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if value < 0 or value != value:
            raise TraitError(
                f"c.JMKSettings.system_metrics_interval = {proposal['value']!r} is not a number of seconds: "
                "use e.g. 5 (a sample every 5 s), or 0 for no system metrics"
            )
        return value

    @default("state_dir")
    def _default_state_dir(self) -> str:
        if _env(ENV_STATE_DIR):
            return str(Path(_env(ENV_STATE_DIR)).expanduser().resolve())
        from platformdirs import user_data_dir

        return user_data_dir("jupyter_mlflow_k8s", appauthor=False)

    @default("storage_url")
    def _default_storage_url(self) -> str:
        return _env(ENV_STORAGE_URL) or Path(self.state_dir, "storage").as_uri()

    @default("tracking_uri")
    def _default_tracking_uri(self) -> str:
        return _env(ENV_TRACKING_URI) or f"sqlite:///{Path(self.state_dir, 'mlflow.db')}"

    @default("default_backend")
    def _default_backend(self) -> str:
        return _env(ENV_BACKEND) or "local"

    @property
    def state_path(self) -> Path:
        """The state directory, created on first use."""
        path = Path(self.state_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def artifact_root(self) -> str:
        """Artifact location for experiments this package creates on a SQLite store.

        Next to the payloads when storage is remote (``s3://bucket/prefix/mlartifacts``), so
        that a team's artifacts land in its bucket; under the state directory otherwise.
        """
        if not self.storage_url.startswith("file:"):
            return f"{self.storage_url.rstrip('/')}/mlartifacts"
        return Path(self.state_dir, "mlartifacts").as_uri()


def load_settings(config: Config | None = None, **overrides: Any) -> JMKSettings:
    """Settings from traitlets config (if any), the environment and the embedded defaults."""
    return JMKSettings(config=config or Config(), **overrides)


def jupyter_config() -> Config:
    """The user's Jupyter configuration, read as a Jupyter application reads it; once per process and path.

    For ``jmk``, which no Jupyter application starts: in each directory of
    :func:`jupyter_core.paths.jupyter_config_path` (``JUPYTER_CONFIG_DIR`` or ``~/.jupyter``, the
    environment's ``etc/jupyter``, ``/usr/local/etc/jupyter``, ``/etc/jupyter``),
    ``jupyter_server_config.py`` and ``.json`` (the sidebar's settings), then
    ``jupyter_mlflow_k8s_config.py`` and ``.json``. The later name wins over the earlier, then the
    first directory over the others, then ``.json`` over ``.py``, as in Jupyter. A file that fails to load is
    skipped with a warning, as Jupyter does.
    """
    from jupyter_core.paths import jupyter_config_path

    return copy.deepcopy(_load_config(tuple(jupyter_config_path())))  # callers may merge into theirs


@functools.cache
def _load_config(directories: tuple[str, ...]) -> Config:
    from traitlets.config.loader import ConfigFileNotFound, JSONFileConfigLoader, PyFileConfigLoader

    config = Config()
    for name in CONFIG_FILE_NAMES:  # one name in every directory, then the next, as Jupyter server does
        for directory in reversed(directories):  # the first directory merges last and wins
            for loader_class, suffix in ((PyFileConfigLoader, ".py"), (JSONFileConfigLoader, ".json")):
                loader = loader_class(name + suffix, path=directory)
                try:
                    config.merge(loader.load_config())
                except ConfigFileNotFound:
                    continue
                except Exception as exc:  # a user's broken file: say so and go on, as Jupyter does
                    log.warning("Skipped the configuration file %s: %s: %s", Path(directory, name + suffix),
                                type(exc).__name__, exc)
    return config
