"""The Jupyter server extension: configuration and wiring of ``/jmk/api`` (handlers in ``handlers.py``).

Enabled by ``jupyter-config/jupyter_server_config.d/jupyter_mlflow_k8s.json`` (installed with the
wheel). Settings come from the server's traitlets config: ``c.JMKSettings.*`` (state directory,
tracking URI, ...) as everywhere else in the package, ``c.JMKExtensionApp.*`` for the API itself.
Nothing heavy happens at startup: MLflow is imported by the first request that needs it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Float, Integer, Unicode, default

from ..config import JMKSettings
from ..util.identity import current_user
from . import handlers, notifications, trigger_notifications
from .service import SidebarService, redact


class JMKExtensionApp(ExtensionApp):
    """The sidebar's REST API under ``/jmk/api`` (see ``openapi.yaml``)."""

    name = "jupyter_mlflow_k8s"
    extension_url = "/jmk"
    load_other_extensions = True

    mlflow_ui_url = Unicode(
        None,
        allow_none=True,
        help=(
            "Where the MLflow UI is, for links from the sidebar. Default: the tracking URI when it is an "
            "MLflow server (http/https), else none. Example: c.JMKExtensionApp.mlflow_ui_url = 'https://mlflow.example.org'"
        ),
    ).tag(config=True)

    api_threads = Integer(
        16,
        help=(
            "Threads that run the API's blocking calls (MLflow, files, scrapes). "
            "Example: c.JMKExtensionApp.api_threads = 32"
        ),
    ).tag(config=True)

    metrics_timeout = Float(
        2.0,
        help="Seconds to wait for a serving endpoint's /metrics. Example: c.JMKExtensionApp.metrics_timeout = 5.0",
    ).tag(config=True)

    notify_interval = Float(
        3.0,
        help=(
            "Seconds between two looks at this server's jobs, to announce to JupyterLab each job of this user "
            "that ends, and at the pipeline triggers' histories, to announce each fire and suggestion (a "
            "Notification; the sidebar setting 'notifications' turns them off in the browser). "
            "0 turns the watching off. Example: c.JMKExtensionApp.notify_interval = 10"
        ),
    ).tag(config=True)

    resources_cache_seconds = Float(
        3.0,
        help=(
            "Seconds a job's resource use (its MLflow run's system/* metrics) is reused before MLflow is asked "
            "again. Example: c.JMKExtensionApp.resources_cache_seconds = 10"
        ),
    ).tag(config=True)

    @default("mlflow_ui_url")
    def _default_mlflow_ui_url(self) -> str | None:
        uri = self._jmk_settings().tracking_uri
        return redact(uri).rstrip("/") if uri.startswith(("http://", "https://")) else None

    def _jmk_settings(self) -> JMKSettings:
        if not hasattr(self, "_settings_cache"):
            self._settings_cache = JMKSettings(parent=self)
        return self._settings_cache

    def initialize_settings(self) -> None:
        """Create the service the handlers share (cheap: no MLflow, no network)."""
        self.service = SidebarService(
            self._jmk_settings(),
            mlflow_ui_url=self.mlflow_ui_url,
            backend_config=self.config,
            threads=self.api_threads,
            metrics_timeout=self.metrics_timeout,
            resources_cache_seconds=self.resources_cache_seconds,
        )
        self.settings["jmk_service"] = self.service
        self.log.info("jupyter_mlflow_k8s: /jmk/api on state directory %s", self.service.settings.state_dir)

    def initialize_handlers(self) -> None:
        """Register the routes of ``/jmk/api``."""
        self.handlers.extend(handlers.ROUTES)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """With the event loop running: register the job-ended event and start watching the jobs."""
        self._watch_task: asyncio.Task[None] | None = None
        if self.notify_interval <= 0:
            return
        logger = getattr(serverapp, "event_logger", None)
        if logger is None:  # a jupyter_server without the event bus (before 2.0)
            self.log.warning("jupyter_mlflow_k8s: this Jupyter server has no event bus; job notifications are off")
            return
        for schema in (notifications.SCHEMA, trigger_notifications.SCHEMA):
            if schema["$id"] not in logger.schemas:
                logger.register_event_schema(schema)

        def emit(data: dict[str, Any]) -> None:
            logger.emit(schema_id=notifications.SCHEMA_ID, data=data)

        watcher = notifications.JobEndWatcher(self.service.jobs.list, current_user())
        self._watch_task = asyncio.create_task(
            notifications.watch_jobs(watcher, emit, self.notify_interval, self.service.executor, self.log),
            name="jmk-job-watch")
        self._trigger_task = asyncio.create_task(self._watch_triggers(logger), name="jmk-trigger-watch")

    async def _watch_triggers(self, logger: Any) -> None:
        """Announce each fire and suggestion of the state directory's triggers (``jmk scheduler`` records them)."""
        watcher = trigger_notifications.TriggerEventWatcher(
            trigger_notifications.history_lister(self.service.settings), since=time.time())
        await notifications.watch_events(
            watcher.check,
            lambda data: logger.emit(schema_id=trigger_notifications.SCHEMA_ID, data=data),
            self.notify_interval,
            self.service.executor,
            self.log,
            "read the triggers' histories to announce their fires",
            trigger_notifications.describe,
        )

    async def stop_extension(self) -> None:
        """Stop the job watcher, the thread pool and the log streams."""
        for name in ("_watch_task", "_trigger_task"):
            task: asyncio.Task[None] | None = getattr(self, name, None)
            if task is not None:
                task.cancel()
        service: Any = getattr(self, "service", None)
        if service is not None:
            service.close()
