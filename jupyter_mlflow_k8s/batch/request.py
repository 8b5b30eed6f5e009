"""What ``jmk batch-predict``, ``%batch_predict`` and a ``batch_predict`` pipeline step ask for, checked at once.

Every flag is read before anything runs; all the mistakes are listed together, each with what to type
instead. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import JMKError
from ..exceptions import JMKUsageError
from ..models import parse_gpus
from ..tracking.refs import ModelRef

BACKENDS = ("local", "kubernetes")
OUTPUT_FORMATS = ("csv", "parquet")
USAGE = (
    "jmk batch-predict MODEL_URI --input 's3://bucket/in/*.parquet' --output s3://bucket/out/ [--shards N] "
    "[--gpus G] [--backend local|kubernetes] [--error-threshold 0.01] [--output-format csv|parquet] "
    "[--retries 2] [--replan]"
)


@dataclasses.dataclass(frozen=True)
class BatchRequest:
    """A checked batch prediction request."""

    model: str
    input: str
    output: str
    shards: int = 1
    gpus: int = 0
    backend: str | None = None
    error_threshold: float = 0.01
    output_format: str | None = None
    retries: int = 2
    replan: bool = False
    experiment: str | None = None

    @classmethod
    def parse(
        cls,
        model: str | None,
        input: str | None,
        output: str | None,
        shards: Any = 1,
        gpus: Any = 0,
        backend: str | None = None,
        error_threshold: Any = 0.01,
        output_format: str | None = None,
        retries: Any = 2,
        replan: bool = False,
        experiment: str | None = None,
    ) -> BatchRequest:
        """Check every value; raises one :class:`JMKUsageError` listing each problem and its fix."""
        problems: list[str] = []
        for flag, value in (("MODEL_URI", model), ("--input", input), ("--output", output)):
            if value is not None and not isinstance(value, str):
                problems.append(
                    f"{flag}: expected text such as s3://bucket/in/ or models:/churn@champion, found {value!r}"
                )
        model, input, output = (v if isinstance(v, str) else None for v in (model, input, output))
        if backend is not None and not isinstance(backend, str):
            backend = repr(backend)
        if output_format is not None and not isinstance(output_format, str):
            output_format = repr(output_format)
        model = (model or "").strip()
        if not model:
            problems.append("no model: give its URI first, e.g. models:/churn@champion (or models:/churn/3)")
        elif model.startswith("models:/"):
            try:
                ModelRef.parse(model)
            except JMKError as exc:
                problems.append(str(exc))
        input = (input or "").strip()
        if not input:
            problems.append("no --input: give the files to predict, e.g. --input 's3://bucket/in/*.parquet'")
        output = (output or "").strip()
        if not output:
            problems.append("no --output: give the prefix to write to, e.g. --output s3://bucket/predictions/")
        elif any(c in output for c in "*?["):
            problems.append(
                f"--output {output!r} is a pattern: give the prefix (folder) to write to, e.g. "
                "--output s3://bucket/predictions/"
            )
        elif input and output.rstrip("/") == input.rstrip("/"):
            problems.append(
                "--output is --input: write the predictions under another prefix, e.g. "
                f"--output {output.rstrip('/')}-predictions/"
            )
        count = _whole(shards, "--shards", "4", 1, problems)
        gpu_count = 0
        try:
            gpu_count = parse_gpus(gpus if gpus is not None else 0)
        except JMKUsageError as exc:
            problems.append(str(exc).rstrip("."))
        if backend is not None and backend not in BACKENDS:
            problems.append(f"--backend {backend!r}: use --backend local (processes here) or --backend kubernetes")
        threshold = _fraction(error_threshold, problems)
        if output_format is not None and output_format not in OUTPUT_FORMATS:
            problems.append(f"--output-format {output_format!r}: use csv or parquet (default: the inputs' format)")
        tries = _whole(retries, "--retries", "2", 0, problems)
        if problems:
            raise JMKUsageError(
                "Cannot start the batch prediction:\n  - " + "\n  - ".join(problems) + f"\nUsage: {USAGE}"
            )
        return cls(
            model,
            input,
            output.rstrip("/") + "/",
            count,
            gpu_count,
            backend,
            threshold,
            output_format,
            tries,
            bool(replan),
            experiment or None,
        )

    def describe(self) -> dict[str, str]:
        """The request as params of the batch's MLflow run."""
        return {
            "batch.model": self.model,
            "batch.input": self.input,
            "batch.output": self.output,
            "batch.shards": str(self.shards),
            "batch.gpus": str(self.gpus),
            "batch.error_threshold": str(self.error_threshold),
        }


def _whole(value: Any, flag: str, example: str, minimum: int, problems: list[str]) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = minimum - 1
    if number < minimum:
        least = "0 or more" if minimum == 0 else f"a whole number of at least {minimum}"
        problems.append(f"{flag} {value!r}: give {least}, e.g. {flag} {example}")
        return minimum
    return number


def _fraction(value: Any, problems: list[str]) -> float:
    """``0.01`` or ``1%`` as a fraction of the rows."""
    text = str(value).strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        number = -1.0
    if not 0 <= number <= 1:
        problems.append(
            f"--error-threshold {value!r}: give the fraction of bad rows allowed, from 0 to 1 "
            "(or a percentage), e.g. --error-threshold 0.01 or --error-threshold 1%"
        )
        return 0.0
    return number
