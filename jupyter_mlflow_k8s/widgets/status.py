"""A job's status in its cell: state, elapsed time, resources, a progress line, a cancel button.

With ipywidgets it is a small live widget; without (a terminal, or ipywidgets missing) the
same facts are a text display that is updated in place when the frontend supports it.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from typing import Any

from ..models import JobRecord, JobState
from ..util.durations import seconds_text

STATE_COLORS = {
    JobState.QUEUED: "#888",
    JobState.RUNNING: "#1a73e8",
    JobState.SUCCEEDED: "#188038",
    JobState.FAILED: "#d93025",
    JobState.CANCELLED: "#e37400",
}
# Redraw at most this often: a widget message per log line would be its own flood.
MIN_REDRAW_SECONDS = 0.25


def describe(record: JobRecord) -> str:
    """One line: ``job 1a2b3c4d · running · 12.3 s · local · 1 GPU · run 5f6e...``."""
    elapsed = seconds_text(record.elapsed) if record.started else f"waiting {seconds_text(record.age)}"
    parts = [f"job {record.job_id}", record.state.value, elapsed, record.spec.backend, record.spec.describe_resources()]
    if record.gpu_ids:
        parts.append(f"CUDA_VISIBLE_DEVICES={','.join(record.gpu_ids)}")
    if record.run_id:
        parts.append(f"MLflow run {record.run_id}")
    if record.message and record.state.terminal:
        parts.append(record.message)
    return " · ".join(parts)


def kernel_widgets() -> Any:
    """The ipywidgets module where a kernel renders widgets; None in a terminal or without ipywidgets."""
    try:
        import ipywidgets as widgets
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return widgets if shell is not None and getattr(shell, "kernel", None) else None


def cancel_control(widgets: Any, on_cancel: Callable[[], Any] | None, click: Callable[[], Any]) -> Any:
    """A Cancel button calling ``click``; without ``on_cancel``, the hint that an interrupt cancels."""
    if on_cancel is None:
        return widgets.HTML("<small>interrupt the kernel (■) to cancel</small>")
    button = widgets.Button(description="Cancel", button_style="warning", icon="stop")
    button.on_click(lambda _: click())
    return button


def cancel_clicked(action: Any, on_cancel: Callable[[], Any] | None) -> None:
    """What the Cancel button of a live view does: disable itself, say so, call ``on_cancel``."""
    if on_cancel is not None:
        action.disabled = True
        action.description = "Cancelling"
        on_cancel()


class JobStatusView:
    """Shows one job and keeps the display current; ``update`` is cheap to call often.

    With ``on_cancel`` it has a Cancel button. A cell that blocks while its job runs gets a
    hint instead: the kernel reads no button clicks while a cell runs, but an interrupt
    (the ■ button) cancels the job.
    """

    def __init__(self, record: JobRecord, on_cancel: Callable[[], Any] | None = None) -> None:
        self.record = record
        self.progress = ""
        self._last_draw = 0.0
        self._widget: Any = None
        self._handle: Any = None
        self._shown_state = record.state
        self._on_cancel = on_cancel
        widgets = kernel_widgets()
        if widgets is not None:
            self._label = widgets.HTML()
            self._progress = widgets.HTML()
            self._action = cancel_control(widgets, on_cancel, self._cancel)
            self._metrics = widgets.HTML()
            self._widget = widgets.VBox([widgets.HBox([self._label, self._action]), self._progress, self._metrics])

    def _cancel(self) -> None:
        cancel_clicked(self._action, self._on_cancel)

    def follow_in_background(self, current: Callable[[], JobRecord], interval: float = 0.5) -> None:
        """Keep the view current from a thread until the job ends (for ``--async`` jobs)."""

        def loop() -> None:
            while True:
                record = current()
                self.update(record)
                if record.state.terminal:
                    return
                time.sleep(interval)

        threading.Thread(target=loop, name=f"jmk-view-{self.record.job_id}", daemon=True).start()

    def show(self) -> None:
        """Put the view in the cell's output."""
        from IPython.display import display

        self._render()
        if self._widget is not None:
            display(self._widget)
        else:
            self._handle = display(_Text(describe(self.record)), display_id=True)

    def update(
        self,
        record: JobRecord | None = None,
        progress: str | None = None,
        force: bool = False,
        metrics: tuple[dict[str, float], dict[str, list[tuple[float, float]]]] | None = None,
    ) -> None:
        """Record new facts; redraw if enough time has passed (or ``force``).

        ``metrics`` is ``(latest values, histories to plot)``, as :func:`tracking.live_metrics`
        returns it.
        """
        if record is not None:
            force = force or record.state != self.record.state
            self.record = record
        if progress is not None:
            self.progress = progress
        if metrics is not None and self._widget is not None:
            self._render_metrics(*metrics)
        now = time.monotonic()
        if force or now - self._last_draw >= MIN_REDRAW_SECONDS:
            self._last_draw = now
            self._render()

    def _render_metrics(self, latest: dict[str, float], history: dict[str, list[tuple[float, float]]]) -> None:
        from .plot import svg_line_plot

        shown = {k: v for k, v in latest.items() if not k.startswith("system/")}
        values = " · ".join(f"{html.escape(k)} <b>{v:.4g}</b>" for k, v in shown.items())
        plot = svg_line_plot(history, width=360, height=110) if any(len(h) > 1 for h in history.values()) else ""
        self._metrics.value = f"<div style='font-size:12px'>{values}</div>{plot}" if values else ""

    def _render(self) -> None:
        if self._widget is not None:
            color = STATE_COLORS[self.record.state]
            self._label.value = f'<span style="color:{color}">●</span> {html.escape(describe(self.record))}'
            self._progress.value = f"<pre style='margin:0'>{html.escape(self.progress)}</pre>" if self.progress else ""
            if self.record.state.terminal:
                self._action.layout.display = "none"
        elif self._handle is not None and (self.record.state.terminal or self.record.state != self._shown_state):
            # Without a widget frontend every redraw may print anew: redraw on state changes only.
            self._shown_state = self.record.state
            self._handle.update(_Text(describe(self.record)))


class _Text:
    """A display object that is plain text everywhere."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text
