"""A real Prometheus server for tests: Debian's ``prometheus`` package, unpacked (not installed) into the cache.

``prometheus_binaries()`` gives ``(prometheus, promtool)`` from
``~/.cache/jupyter_mlflow_k8s/prometheus-<Debian version>/``: the package is fetched with
``apt-get download`` (after an ``apt-get update`` only when that fails) and unpacked with
``dpkg-deb -x``, once per version, under a lock and moved into place whole, so two test
processes never see half a tree. Nothing is installed on the machine. Where apt cannot get the
package, the test is skipped with apt's own reason.

:class:`PrometheusServer` runs that binary on a free port of 127.0.0.1 with a scrape job for the
given targets (scraped every second), and answers PromQL through the HTTP API (``/api/v1/query``).
A test that fails inside it prints Prometheus' log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from cluster.images import cache_dir
from servers import ServerProcess, cache_lock, free_port

PACKAGE = "prometheus"
#: One query's answer: (labels, value) per series of an instant vector; a scalar is one sample without labels.
Sample = tuple[dict[str, str], float]


# ------------------------------------------------------------------------------------------ the binaries


def prometheus_binaries() -> tuple[Path, Path]:
    """``(prometheus, promtool)`` of Debian's package, unpacked once into the cache; skips when apt cannot get it."""
    root = _unpacked()
    prometheus, promtool = root / "usr" / "bin" / "prometheus", root / "usr" / "bin" / "promtool"
    for binary in (prometheus, promtool):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{root} holds no executable {binary.name}: remove that folder to unpack the package again")
    return prometheus, promtool


def _folder(version: str) -> Path:
    """The cache folder of one Debian version (an epoch's ``:`` made safe for file names)."""
    return cache_dir() / f"{PACKAGE}-{re.sub(r'[^A-Za-z0-9.+~_-]', '_', version)}"


def _candidate_version() -> str | None:
    """The version ``apt-get download`` would fetch, or None when apt does not know the package."""
    if shutil.which("apt-cache") is None:
        return None
    result = subprocess.run(["apt-cache", "policy", PACKAGE], capture_output=True, text=True, check=False)
    match = re.search(r"^\s*Candidate:\s*(\S+)", result.stdout, re.MULTILINE)
    return match.group(1) if match and match.group(1) != "(none)" else None


def _unpacked() -> Path:
    """The unpacked package's root folder (``usr/bin/prometheus`` inside); skips the test when apt cannot get it."""
    with cache_lock("prometheus"):
        version = _candidate_version()
        if version is not None and (_folder(version) / "usr" / "bin" / "prometheus").exists():
            return _folder(version)
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            cached = sorted(cache_dir().glob(f"{PACKAGE}-*/usr/bin/prometheus"))
            if cached:  # apt went away since: the newest unpacked version still runs
                return cached[-1].parents[2]
            pytest.skip(f"a real Prometheus needs Debian's {PACKAGE} package: no apt-get/dpkg-deb here")
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=f".{PACKAGE}-") as work:
            deb = _download(Path(work))
            result = subprocess.run(["dpkg-deb", "--field", str(deb), "Version"], capture_output=True, text=True,
                                    check=False)
            if result.returncode != 0 or not result.stdout.strip():
                pytest.fail(f"dpkg-deb cannot read {deb.name}: {result.stderr.strip()}")
            target = _folder(result.stdout.strip())
            if (target / "usr" / "bin" / "prometheus").exists():
                return target
            tree = Path(work) / "root"
            result = subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], capture_output=True, text=True,
                                    check=False)
            if result.returncode != 0:
                pytest.fail(f"dpkg-deb -x {deb.name} failed: {result.stderr.strip()}")
            shutil.rmtree(target, ignore_errors=True)  # a tree without its binary: an older, broken unpack
            tree.rename(target)  # same file system: the whole tree appears at once
            return target


def _download(work: Path) -> Path:
    """``apt-get download prometheus`` into ``work``; ``apt-get update`` and a second try when the first fails."""
    work.chmod(0o755)  # apt's sandbox user may read it (else apt warns, and downloads as root anyway)
    download = ["apt-get", "download", "-q", PACKAGE]
    result = subprocess.run(download, cwd=work, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        update = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, check=False)
        if update.returncode != 0:
            pytest.skip(f"apt-get download {PACKAGE} failed ({_last_line(result.stderr)}), "
                        f"and so did apt-get update ({_last_line(update.stderr)})")
        result = subprocess.run(download, cwd=work, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.skip(f"apt-get download {PACKAGE} failed, also after apt-get update: {_last_line(result.stderr)}")
    debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
    if len(debs) != 1:
        pytest.fail(f"apt-get download {PACKAGE} left {[d.name for d in debs]} in {work}, not one package")
    return debs[0]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no message"


# ------------------------------------------------------------------------------------------ the server


class PrometheusError(AssertionError):
    """Prometheus refused a query, or an answer never came; the message has its error."""


class PrometheusServer:
    """A Prometheus process scraping ``targets`` (``host:port``) every second; a context manager.

    ``folder`` holds its configuration, its storage and its log. Leaving the ``with`` block stops
    it; leaving it with an exception prints the log first (pytest shows it with the failure).
    """

    def __init__(self, targets: Sequence[str], folder: Path, job: str = "jmk-serving",
                 metrics_path: str = "/metrics") -> None:
        self.targets = list(targets)
        self.folder = folder
        self.job = job
        self.metrics_path = metrics_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: ServerProcess | None = None

    def config(self) -> dict[str, Any]:
        """prometheus.yml as a dict (written as JSON, which YAML reads as it is)."""
        return {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": self.job, "metrics_path": self.metrics_path,
                                "static_configs": [{"targets": self.targets}]}],
        }

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        """Start Prometheus and wait for ``/-/ready``."""
        prometheus, _ = prometheus_binaries()
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "prometheus.yml"
        config.write_text(json.dumps(self.config(), indent=2) + "\n")
        argv = [str(prometheus), f"--config.file={config}", f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}"]
        self.process = ServerProcess("prometheus", argv, self.folder / "prometheus.log")
        self.process.wait_ready(lambda: _get(f"{self.url}/-/ready", timeout=1.0) is not None, timeout)
        return self

    def log(self) -> str:
        """What Prometheus printed so far."""
        return self.process.log_tail(20000) if self.process is not None else ""

    def stop(self) -> None:
        """Stop Prometheus (SIGTERM, then SIGKILL to what is left)."""
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if error is not None:
            print(f"--- prometheus log ({self.folder / 'prometheus.log'}) ---\n{self.log()}")
        self.stop()

    # -- the HTTP API

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``'s ``data``; raises :class:`PrometheusError` with Prometheus' error."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        body = _get(url, timeout=10.0, errors=True)
        if body is None:
            raise PrometheusError(f"no answer from {url}")
        answer = json.loads(body)
        if answer.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """The samples of an instant query at ``at`` (a Unix time; now by default), sorted by labels."""
        data = self.api("query", query=expr, **({"time": f"{at:.3f}"} if at is not None else {}))
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr} gave a {data['resultType']}, not an instant vector")
        samples = [(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]
        return sorted(samples, key=lambda sample: sorted(sample[0].items()))

    def value(self, expr: str, at: float | None = None, **labels: str) -> float | None:
        """The one sample of ``expr`` whose labels include ``labels`` (None when none); fails when several match."""
        wanted = set(labels.items())
        matching = [v for ls, v in self.query(expr, at) if wanted <= set(ls.items())]
        if len(matching) > 1:
            raise PrometheusError(f"{expr} has {len(matching)} series with {labels}, not one")
        return matching[0] if matching else None

    def targets_up(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health and last error."""
        return list(self.api("targets", state="active")["activeTargets"])

    def wait_for(self, expr: str, done: Callable[[list[Sample]], bool], timeout: float = 60.0,
                 why: str = "") -> list[Sample]:
        """Poll ``expr`` until ``done(samples)``; fails with the last answer and the targets' health."""
        deadline = time.monotonic() + timeout
        samples: list[Sample] = []
        while time.monotonic() < deadline:
            samples = self.query(expr)
            if done(samples):
                return samples
            time.sleep(0.25)
        raise PrometheusError(f"{why or expr}: not reached in {timeout:.0f} s; last answer {samples}; "
                              f"targets {self.targets_up()}")


def _get(url: str, timeout: float, errors: bool = False) -> bytes | None:
    """The body of a GET (None on a connection error; an HTTP error's body when ``errors``, else None)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as error:
        return bytes(error.read()) if errors else None
    except (urllib.error.URLError, OSError):
        return None
