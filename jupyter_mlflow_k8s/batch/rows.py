"""Predicting the rows of one file: rows the model's signature refuses, or its ``predict`` fails on, are set aside.

The model is the serving code's :class:`~jupyter_mlflow_k8s.serving.model_loading.LoadedModel`, and the
good rows go to its pyfunc ``predict`` as a DataFrame, as an online request would: the predictions are
the ones online serving gives. A row is bad when a column the signature names is missing or empty, or
holds a value of another type; a batch that ``predict`` fails on is halved until the rows it fails on
are found. Each bad row keeps its values and a reason. No I/O here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: The pandas dtype a signature's scalar type is given before ``predict`` (pyfunc checks it again).
DTYPES = {
    "double": "float64",
    "float": "float32",
    "long": "int64",
    "integer": "int32",
    "boolean": "bool",
    "string": "object",
}
PREDICTION = "prediction"
#: Rows tried alone that all fail, none passing, before the rest of a file is set aside without trying.
GIVE_UP_AFTER = 100
REASON = "_reason"
ROW = "_row"
SOURCE = "_source"


@dataclasses.dataclass
class Predicted:
    """What one file gave: the good rows with their predictions, and the bad rows with their reasons."""

    good: Any  # DataFrame: the input columns, then the prediction column(s)
    bad: Any  # DataFrame: _source, _row, _reason, then the input columns as read


def check_rows(frame: Any, columns: tuple[str, ...] | None, types: dict[str, str]) -> tuple[Any, dict[int, str]]:
    """The rows the signature accepts, typed as it says, and ``{row position: reason}`` of the others."""
    import pandas as pd

    reasons: dict[int, str] = {}
    if not columns:
        return frame, reasons
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        said = f"no column {', '.join(map(repr, missing))} (the model's signature needs {', '.join(columns)})"
        return frame.iloc[0:0], dict.fromkeys(range(len(frame)), said)
    typed = {}
    for name in columns:
        kind = types[name]
        column = frame[name]
        empty = column.isna()
        for position in empty.to_numpy().nonzero()[0]:
            reasons.setdefault(int(position), f"column {name!r} is empty")
        if kind in ("double", "float", "long", "integer"):
            numbers = pd.to_numeric(column, errors="coerce")
            wrong = numbers.isna() & ~empty
            if kind in ("long", "integer"):
                wrong |= numbers.notna() & (numbers != numbers.round())
            for position in wrong.to_numpy().nonzero()[0]:
                reasons.setdefault(int(position), f"column {name!r}: {column.iloc[position]!r} is not a {kind}")
            typed[name] = numbers
        elif kind == "boolean":
            truth = column.map(_boolean)
            for position in (truth.isna() & ~empty).to_numpy().nonzero()[0]:
                reasons.setdefault(int(position), f"column {name!r}: {column.iloc[position]!r} is not a boolean")
            typed[name] = truth
        else:
            typed[name] = column.map(lambda v: v if v is None or isinstance(v, str) else str(v))
    keep = [p for p in range(len(frame)) if p not in reasons]
    good = pd.DataFrame({name: typed[name].iloc[keep] for name in columns}, index=frame.index[keep])
    good = good.astype({name: DTYPES[types[name]] for name in columns})
    return good, reasons


def _boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return {"true": True, "1": True, "false": False, "0": False}.get(text)


def predict_rows(model: Any, frame: Any) -> tuple[Any, dict[int, str]]:
    """``predict`` on ``frame``; when it fails, on halves until the failing rows are found.

    Returns the predictions of the rows it succeeded on (a DataFrame, indexed like ``frame``) and
    ``{row position: reason}`` of the others.
    """
    import pandas as pd

    pieces: list[Any] = []
    reasons: dict[int, str] = {}
    stack = [(0, len(frame))]
    while stack:
        start, stop = stack.pop()
        if start >= stop:
            continue
        if not pieces and len(reasons) >= GIVE_UP_AFTER:  # no row passes: the model fails, not the rows
            last = reasons[max(reasons)]
            reasons.update(
                dict.fromkeys(
                    range(start, stop),
                    f"{last} (not tried row by row: the first {GIVE_UP_AFTER} rows tried alone all failed)",
                )
            )
            continue
        part = frame.iloc[start:stop]
        try:
            pieces.append(_as_frame(model.predict(part), part.index))
        except Exception as exc:  # the model's own error on these rows: find the rows it is about
            if stop - start == 1:
                lines = str(exc).strip().splitlines()
                reasons[start] = f"predict failed: {type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
            else:
                middle = (start + stop) // 2
                stack += [(middle, stop), (start, middle)]
    if not pieces:
        return pd.DataFrame(index=frame.index[0:0]), reasons
    return pd.concat(pieces).loc[[i for p, i in enumerate(frame.index) if p not in reasons]], reasons


def _as_frame(predictions: Any, index: Any) -> Any:
    """``predict``'s answer as columns: ``prediction`` for one value per row, ``prediction_<name>`` for several."""
    import numpy as np
    import pandas as pd

    if isinstance(predictions, pd.DataFrame):
        if predictions.shape[1] == 1:
            return pd.DataFrame({PREDICTION: predictions.iloc[:, 0].to_numpy()}, index=index)
        return pd.DataFrame({f"{PREDICTION}_{c}": predictions[c].to_numpy() for c in predictions.columns}, index=index)
    values = np.asarray(predictions.to_numpy() if isinstance(predictions, pd.Series) else predictions)
    if len(values) != len(index):
        raise ValueError(f"predict returned {len(values)} values for {len(index)} rows")
    if values.ndim == 2 and values.shape[1] > 1:
        return pd.DataFrame({f"{PREDICTION}_{i}": values[:, i] for i in range(values.shape[1])}, index=index)
    return pd.DataFrame({PREDICTION: values.reshape(len(index), -1)[:, 0] if values.ndim > 1 else values}, index=index)


def predict_file(loaded: Any, frame: Any, source: str) -> Predicted:
    """Check and predict the rows of one file (``loaded``: the serving code's LoadedModel)."""
    import pandas as pd

    frame = frame.reset_index(drop=True)
    checked, reasons = check_rows(frame, loaded.columns, loaded.types)
    predictions, failed = predict_rows(loaded.pyfunc, checked)
    positions = checked.index.to_numpy()
    for position, reason in failed.items():
        reasons[int(positions[position])] = reason
    good_rows = [p for p in range(len(frame)) if p not in reasons]
    good = (
        pd.concat([frame.iloc[good_rows], predictions.loc[good_rows]], axis=1)
        if good_rows
        else pd.concat([frame.iloc[0:0], predictions.iloc[0:0]], axis=1)
    )
    if not any(str(c).startswith(PREDICTION) for c in good.columns):  # no row passed: the column all the same
        good[PREDICTION] = pd.Series(dtype="float64")
    bad_rows = sorted(reasons)
    bad = frame.iloc[bad_rows].copy()
    bad.insert(0, REASON, [reasons[p] for p in bad_rows])
    bad.insert(0, ROW, bad_rows)
    bad.insert(0, SOURCE, source)
    return Predicted(good, bad)
