"""Serving registered models: an inference server with batching, canaries, drift and Prometheus metrics.

``python -m jupyter_mlflow_k8s.serving MODEL_URI`` (or ``jmk serve``, ``%serve``) loads an MLflow
model and answers MLflow's scoring protocol on ``/invocations``, with ``/ping``, ``/health``,
``/version`` and ``/metrics``. Locally it is a process on a free port; on Kubernetes a Deployment
and a Service.
"""
