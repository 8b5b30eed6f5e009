"""Fixtures that start real servers on 127.0.0.1: ``mlflow server`` and an S3 endpoint."""

from __future__ import annotations
