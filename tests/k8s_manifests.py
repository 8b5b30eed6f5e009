"""Validate Kubernetes manifests as the API server would, without a cluster.

``validate_manifest`` runs two layers and fails with every problem of both:

- the OpenAPI schema of each supported Kubernetes minor version, strict (an unknown field is an
  error), from the schemas kubernetes-validate bundles;
- ``jupyter_mlflow_k8s.k8s.validation.check_manifest``: the server-side rules no schema carries.

``kubernetes_validate.validate`` stops at the first error and reads its 1.8 MB definitions file
again on every call. Here the schemas are found the same way, but each (version, apiVersion,
kind) gets one validator, built once, that reports every error.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import jsonschema
import kubernetes.client
from kubernetes_validate.utils import (
    SchemaNotFoundError,
    VersionNotSupportedError,
    all_versions,
    major_minor,
    schema_contents,
)
from packaging.version import Version
from referencing import Registry, Resource

from jupyter_mlflow_k8s.k8s.validation import check_manifest, json_path

SUPPORTED_VERSIONS = tuple(f"1.{minor}" for minor in range(27, 38))


def as_manifest(obj: object) -> dict[str, Any]:
    """Plain JSON data for a client model object (or a dict, which may hold some), as the client would send it."""
    return _api_client().sanitize_for_serialization(obj)


def validate_manifest(obj: object, versions: Sequence[str] = SUPPORTED_VERSIONS) -> None:
    """Fail with every problem the schemas of ``versions`` and ``check_manifest`` find in ``obj``.

    Each problem reads ``VERSIONS: PATH: MESSAGE``; a message found for several versions is listed
    once, with the versions in runs (``1.27-1.30, 1.35``).

    Raises:
        AssertionError: listing the problems.
        VersionNotSupportedError: a version kubernetes-validate has no schemas for.
    """
    manifest = as_manifest(obj)
    found: dict[str, list[str]] = {}
    for version in versions:
        for problem in schema_problems(manifest, version):
            found.setdefault(problem, []).append(version)
    lines = [f"{_runs(found_in, versions)}: {problem}" for problem, found_in in found.items()]
    lines += [f"{_runs(versions, versions)}: {problem}" for problem in check_manifest(manifest)]
    if lines:
        name = manifest.get("metadata", {}).get("name")
        raise AssertionError(
            f"{manifest.get('kind')} {name!r} is invalid:\n" + "\n".join(f"  {line}" for line in lines)
        )


def schema_problems(manifest: dict[str, Any], version: str) -> list[str]:
    """Every error of ``manifest`` against the strict schema of Kubernetes ``version``, as ``PATH: MESSAGE``."""
    api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["apiVersion, kind: required value: a manifest names its apiVersion and kind"]
    try:
        validator = _validator(version, api_version, kind)
    except SchemaNotFoundError:  # its message names the version: leave that out, to list it once for all versions
        return [
            f"apiVersion: no schema for kind {kind} in apiVersion {api_version}: removed, not yet added, or misspelt"
        ]
    errors = sorted(validator.iter_errors(manifest), key=lambda error: json_path(error.absolute_path))
    return [f"{json_path(error.absolute_path) or '(root)'}: {error.message}" for error in errors]


@functools.cache
def _api_client() -> kubernetes.client.ApiClient:
    return kubernetes.client.ApiClient()


@functools.cache
def _schema_dir(version: str) -> str:
    """The strict schemas kubernetes-validate uses for ``version``: the newest release's not newer than it."""
    wanted = Version(major_minor(version))
    releases = [release for release in all_versions() if Version(major_minor(release)) <= wanted]
    if not releases or wanted > Version(major_minor(all_versions()[-1])):
        raise VersionNotSupportedError(version)
    return f"kubernetes-json-schema/v{releases[-1]}-local-strict"


@functools.cache
def _definitions(schema_dir: str, version: str) -> Registry:
    return Resource.from_contents(schema_contents(f"{schema_dir}/_definitions.json", version)) @ Registry()


@functools.cache
def _validator(version: str, api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema_dir = _schema_dir(version)
    # Named as kubernetes_validate.validate names them: rbac.authorization.k8s.io/v1 -> rbac-v1.
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = schema_contents(f"{schema_dir}/{kind.lower()}-{group_version}.json", version)
    except FileNotFoundError:
        raise SchemaNotFoundError(kind=kind, version=version, api_version=api_version) from None
    registry = Resource.from_contents(schema) @ _definitions(schema_dir, version)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _runs(found_in: Sequence[str], versions: Sequence[str]) -> str:
    """``found_in`` as runs of consecutive ``versions``: '1.27-1.37', '1.27', '1.27-1.30, 1.35'."""
    runs: list[list[str]] = []
    after_hit = False
    for version in versions:
        hit = version in found_in
        if hit and after_hit:
            runs[-1].append(version)
        elif hit:
            runs.append([version])
        after_hit = hit
    return ", ".join(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)
