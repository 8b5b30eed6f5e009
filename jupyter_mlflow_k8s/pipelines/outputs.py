"""Step outputs: small JSON values a step notebook publishes for the steps after it.

Inside a step notebook::

    import jupyter_mlflow_k8s as jmk
    jmk.output("features_uri", uri)

A later step reads it as the parameter template ``"{{ steps.prepare.outputs.features_uri }}"``.
The engine names a file in ``JMK_STEP_OUTPUTS``; each call appends one JSON line to it and
:func:`read_outputs` reads them back (the last value of a name wins). Run by hand, outside a
pipeline, :func:`output` only says what it would publish. Nothing here imports anything heavy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..exceptions import JMKUsageError

OUTPUTS_ENV = "JMK_STEP_OUTPUTS"


def output(name: str, value: Any) -> None:
    """Publish ``value`` as the step output ``name`` for the steps that need this one.

    Args:
        name: A Python identifier; later steps refer to it as ``{{ steps.STEP.outputs.NAME }}``.
        value: Anything JSON can hold (numbers, strings, booleans, None, lists, dicts). Store big
            things (data frames, arrays, models) in storage and publish their URI.

    Raises:
        JMKUsageError: The name is not an identifier, or the value is not JSON-serializable.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise JMKUsageError(
            f"output name {name!r} is not a Python identifier. Use a name such as features_uri; "
            "later steps read it as '{{ steps.STEP.outputs.features_uri }}'."
        )
    try:
        line = json.dumps({"name": name, "value": value}, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise JMKUsageError(
            f"output {name!r}: a value of type {type(value).__name__} is not JSON-serializable ({exc}). "
            "Outputs are small values passed to later steps as parameters: numbers, strings, booleans, "
            "None, lists and dicts of them. Store big things (data frames, arrays, models) in storage and "
            f"publish their URI instead, e.g. output({name!r}, 's3://bucket/run/{name}')."
        ) from None
    target = os.environ.get(OUTPUTS_ENV)
    if not target:
        print(f"[jmk] output {name} = {value!r} (not in a pipeline run)")
        return
    with Path(target).open("a", encoding="utf-8") as stream:
        stream.write(line + "\n")


def read_outputs(path: str | Path) -> dict[str, Any]:
    """The outputs a step published into ``path``, by name; the last value of a name wins.

    A missing file means no outputs. A line that is not a complete JSON record (a step killed in
    the middle of a write) is skipped.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    outputs: dict[str, Any] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("name"), str) and "value" in record:
            outputs[record["name"]] = record["value"]
    return outputs
