"""The launch form of ``%%train_form``: JupyterLab's "Run cell as job" form, in ipywidgets.

For frontends without the JupyterLab extension (classic Notebook, VS Code, Colab). The form only
presents: what a cell ships and the ``%%train`` line of its values come from the callables it is
given (the kernel side of the launch forms, ``magics/launcher.py``), so the line it previews and
runs is the one ``%%train`` itself checks. It never builds a line or runs a job on its own.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from typing import Any

# The fields of the form, in order: key, label, placeholder.
TEXT_FIELDS = (
    ("gpus", "GPUs", "0"),
    ("cpu", "CPU", "e.g. 4 or 500m"),
    ("memory", "Memory", "e.g. 16Gi"),
    ("image", "Image", "the configured image"),
    ("experiment", "Experiment", "the notebook's name"),
    ("register", "Register as", "a model name, e.g. mnist-clf"),
)
MakeLine = Callable[[dict[str, Any], str], Mapping[str, Any]]
Submit = Callable[[Mapping[str, Any]], Any]


class TrainForm:
    """Backend, preset, resources, experiment, registration; what ships; the live ``%%train`` line; Run.

    Args:
        described: What the kernel says of the cell (the ``describe`` reply of the launch forms).
        make_line: The form's values and other flags -> the ``line`` reply (``ok``, ``line``, ``errors``).
        submit: Runs an accepted ``line`` reply (writes the line into the cell, runs ``%%train``).
    """

    def __init__(self, described: Mapping[str, Any], make_line: MakeLine, submit: Submit) -> None:
        import ipywidgets as widgets

        self.described = described
        self._make_line = make_line
        self._submit = submit
        self.reply: Mapping[str, Any] = {}
        self.result: Any = None
        self.error: BaseException | None = None
        values = described["values"]
        default = described.get("default_backend") or "local"
        backends = list(described.get("backends") or [default])
        if values.get("backend") and values["backend"] not in backends:
            backends.append(values["backend"])  # kept as typed; the line's check says what is wrong with it
        self.backend = widgets.Dropdown(
            options=[(f"default ({default})", None), *((name, name) for name in backends)], value=values.get("backend")
        )
        presets = [(self._preset_label(p), p["name"]) for p in described.get("presets") or ()]
        if values.get("preset") and values["preset"] not in [name for _, name in presets]:
            presets.append((f"{values['preset']} (not configured)", values["preset"]))
        self.preset = widgets.Dropdown(options=[("none", None), *presets], value=values.get("preset"))
        self.texts = {
            key: widgets.Text(value=values.get(key) or "", placeholder=placeholder, continuous_update=True)
            for key, _, placeholder in TEXT_FIELDS
        }
        self.run_async = widgets.Checkbox(value=bool(values.get("async")), description="return at once (--async)",
                                          indent=False)  # fmt: skip
        self.extra = widgets.Text(value=described.get("extra") or "", placeholder="--param lr=0.1 --timeout 2h")
        controls: dict[str, Any] = {"backend": self.backend, "preset": self.preset, **self.texts,
                                    "async": self.run_async, "extra": self.extra}  # fmt: skip
        labels = {"backend": "Backend", "preset": "Preset", "async": "Async", "extra": "Other flags",
                  **{key: label for key, label, _ in TEXT_FIELDS}}  # fmt: skip
        self.errors = {key: self._html(widgets, "", "jmk-TrainForm-error") for key in [*controls, "cell", "request"]}
        rows = [
            widgets.HBox([self._html(widgets, html.escape(labels[key]), "jmk-TrainForm-label"), control,
                          self.errors[key]], _dom_classes=("jmk-TrainForm-field",))
            for key, control in controls.items()
        ]  # fmt: skip
        self.ship = self._html(widgets, ship_table(described), "jmk-TrainForm-ship")
        self.preview = self._html(widgets, "", "jmk-TrainForm-line")
        self.run_button = widgets.Button(description="Run as job", button_style="primary", icon="play",
                                         tooltip="write this line into the cell and run it with %%train")  # fmt: skip
        self.run_button.add_class("jmk-TrainForm-run")
        self.run_button.on_click(lambda _: self.run())
        self.output = widgets.Output()
        self.output.add_class("jmk-TrainForm-output")
        self.widget = widgets.VBox(
            [*rows, self.ship, self.preview, self.errors["cell"], self.errors["request"], self.run_button,
             self.output],
            _dom_classes=("jmk-TrainForm",),
        )  # fmt: skip
        for control in controls.values():
            control.observe(lambda _: self.refresh(), names="value")
        self.refresh()

    @staticmethod
    def _html(widgets: Any, text: str, css_class: str) -> Any:
        shown = widgets.HTML(text)
        shown.add_class(css_class)
        return shown

    @staticmethod
    def _preset_label(preset: Mapping[str, Any]) -> str:
        label = f"{preset['name']}: {preset['summary']}" if preset.get("summary") else str(preset["name"])
        return f"{label} (problem: {preset['problem']})" if preset.get("problem") else label

    def values(self) -> dict[str, Any]:
        """The form's values as the launch forms pass them: strings or None, and ``async``."""
        values: dict[str, Any] = {"backend": self.backend.value, "preset": self.preset.value}
        for key, text in self.texts.items():
            values[key] = text.value.strip() or None
        values["async"] = bool(self.run_async.value)
        return values

    def refresh(self) -> None:
        """Ask for the line of the current values; show it, each problem by its field, and enable Run when none."""
        self.reply = self._make_line(self.values(), self.extra.value)
        line = self.reply.get("line") or ""
        self.preview.value = f"<code>{html.escape(line)}</code>" if line else ""
        problems = self.reply.get("errors") or {}
        for key, shown in self.errors.items():
            shown.value = f"<span>{html.escape(problems[key])}</span>" if key in problems else ""
        for key in set(problems) - set(self.errors):  # a key the form has no place for: show it with the cell's
            self.errors["cell"].value += f"<span>{html.escape(problems[key])}</span>"
        self.run_button.disabled = not self.reply.get("ok")

    def run(self) -> Any:
        """Run the previewed line through ``%%train`` (nothing when a problem is shown); output in the form."""
        if not self.reply.get("ok"):
            return None
        reply = self.reply
        self.run_button.disabled = True
        self.output.clear_output()
        self.result, self.error = None, None
        try:
            with self.output:
                try:
                    self.result = self._submit(reply)
                except Exception as exc:  # the magic's own message (a usage error, a failed job), in the form
                    self.error = exc
                    print(f"{type(exc).__name__}: {exc}")
        finally:
            self.run_button.disabled = not self.reply.get("ok")
        return self.result


def ship_table(described: Mapping[str, Any]) -> str:
    """The HTML table of what the cell ships: name, type, size, and a warning for what cannot be sent."""
    ship = described.get("ship") or []
    if not ship:
        return "<p>The cell reads no notebook variables: it ships nothing.</p>"
    rows = []
    for item in ship:
        cells = [html.escape(item["name"]), html.escape(item["type"]), html.escape(item["size_text"] or "-")]
        row = "".join(f"<td>{cell}</td>" for cell in cells)
        rows.append(f"<tr>{row}</tr>")
        if item.get("warning"):
            rows.append(f'<tr class="jmk-TrainForm-warning"><td colspan="3">⚠ {html.escape(item["warning"])}</td></tr>')
    returns = ", ".join(described.get("returns") or []) or "nothing"
    return (
        f"<table><thead><tr><th>ships</th><th>type</th><th>size</th></tr></thead><tbody>{''.join(rows)}</tbody>"
        f"<tfoot><tr><td>total</td><td></td><td>{html.escape(described.get('ship_total_text') or '')}</td></tr>"
        f"</tfoot></table><p>Comes back: {html.escape(returns)}</p>"
    )


def text_form(described: Mapping[str, Any], reply: Mapping[str, Any]) -> str:
    """The form as text, where no widgets show (a terminal): what ships, and the line to use instead."""
    lines = ["No widgets here: put this line on top of the cell and run it instead of %%train_form:"]
    if reply.get("line"):
        lines.append(f"    {reply['line']}")
    for key, problem in {**described.get("errors", {}), **(reply.get("errors") or {})}.items():
        lines.append(f"  problem ({key}): {problem}")
    for item in described.get("ship") or []:
        lines.append(f"  ships {item['name']}  {item['type']}  {item['size_text'] or '-'}")
        if item.get("warning"):
            lines.append(f"    warning: {item['warning']}")
    lines.append(f"  comes back: {', '.join(described.get('returns') or []) or 'nothing'}")
    return "\n".join(lines)
