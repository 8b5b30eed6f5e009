"""Notebook pipelines: steps of parameterized notebooks run with papermill (spec, engine, cache)."""
