"""Pipelines as written: ``pipeline.yaml`` or the Python API, checked before anything runs.

A pipeline file::

    name: churn
    parameters:              # defaults; `-p lr=0.1` overrides them
      data_uri: s3://data/churn.csv
      lr: 0.01
    max_parallel: 4          # optional
    steps:
      prepare:
        notebook: prepare.ipynb          # relative to this file's folder
        parameters:
          data_uri: "{{ parameters.data_uri }}"
      train:
        notebook: train.ipynb
        needs: [prepare]
        parameters:                      # templates are resolved when the step runs
          features_uri: "{{ steps.prepare.outputs.features_uri }}"
          lr: "{{ parameters.lr }}"
        resources: {cpu: 2, memory: 8Gi, gpus: 1}
        backend: kubernetes
        image: ghcr.io/acme/train:1
        retries: 1
        cache: true
        timeout: 2h

The same pipeline in code goes through the same path (:func:`pipeline_from_dict`)::

    p = pipeline("churn", parameters={"data_uri": "s3://data/churn.csv", "lr": 0.01})
    p.step("prepare", "prepare.ipynb", parameters={"data_uri": "{{ parameters.data_uri }}"})
    p.step("train", "train.ipynb", needs=["prepare"], resources={"gpus": 1})
    built = p.build()

A template that is a whole string (``"{{ parameters.lr }}"``) becomes the value itself, of any
type; one inside a longer string (``"s3://b/{{ parameters.run }}/x"``) is replaced by ``str(value)``.
:func:`validate` reads the notebooks without running them (their code cells' syntax trees) to
check parameter names against the cell tagged ``parameters`` (papermill's convention) and output
references against the ``output("NAME", ...)`` calls; it lists every problem at once.

The package: :mod:`.loading` (the file and the Python API), :mod:`.validation`, :mod:`.graph` (order,
upstream steps, templates), :mod:`.notebooks` (reading notebooks), :mod:`.base` (what they share).
"""

from __future__ import annotations

from .base import PARAMETERS_TAG, RESOURCE_KEYS, STEP_KEYS, STEP_NAME_MAX, TOP_LEVEL_KEYS, InvalidPipeline
from .graph import resolve_parameters, topological_order, upstream
from .loading import PipelineBuilder, load_pipeline, parse_value, pipeline, pipeline_from_dict
from .notebooks import notebook_outputs, notebook_parameters
from .validation import pipeline_problems, validate

__all__ = [
    "PARAMETERS_TAG", "RESOURCE_KEYS", "STEP_KEYS", "STEP_NAME_MAX", "TOP_LEVEL_KEYS", "InvalidPipeline",
    "PipelineBuilder", "load_pipeline", "notebook_outputs", "notebook_parameters", "parse_value", "pipeline",
    "pipeline_from_dict", "pipeline_problems", "resolve_parameters", "topological_order", "upstream", "validate",
]
