"""Container images for the test cluster, built here with buildah from the Dockerfiles users get.

No public container registry is reachable from the machines the tests run on, so the images the
Dockerfiles start FROM are built here too:

- ``localhost/jmk/bookworm:<key>``: Debian 12 (minbase) made with ``mmdebstrap`` from the host's own
  Debian mirror (the URIs are read from the host's apt sources at run time), in place of
  ``nvidia/cuda`` for ``docker/runner/Dockerfile`` (``--build-arg CUDA_IMAGE``);
- ``localhost/jmk/singleuser-base:<key>``: that plus what ``docker/singleuser/Dockerfile`` expects of
  a Jupyter Docker Stacks image (``containerfiles/singleuser-base.Containerfile``, ``--build-arg BASE_IMAGE``);
- ``localhost/jmk/runner:<key>``, ``localhost/jmk/singleuser:<key>`` and ``localhost/jmk/mlflow:<key>``:
  the three Dockerfiles, unchanged, with ``buildah bud --layers`` and the repository root as context; the
  MLflow server's (``docker/mlflow/Dockerfile``, ``python:3.11-slim`` for users) is built on the single-user
  base, whose ``python`` with pip is first on PATH too (``--build-arg BASE_IMAGE``);
- ``localhost/jmk/pause:3.4.1-<key>``: a given static ``pause`` binary alone (:func:`build_pause`).

Every tag is a digest of what the image is made of (Dockerfile, the files its COPY steps take from the
context as ``.dockerignore`` leaves them, build arguments, the base's tag), so an existing tag means
the build can be skipped; buildah's layer cache makes a rebuild after a change in ``jupyter_mlflow_k8s/``
redo only the steps from that COPY on.

RUN steps use the host network and the host's own package configuration, mounted read-only into each
step (``buildah bud --volume``) rather than written into the Dockerfiles: a ``pip.conf`` generated from
the host's pip configuration at ``/etc/pip.conf`` (its local wheel directories and file indexes mounted
at their own paths, so ``torch==2.13.0`` is the CPU wheel on disk), a ``.yarnrc.yml`` naming the host's
npm registry at ``/root/.yarnrc.yml`` (for jlpm in the single-user wheel stage), and the host's CA
bundle, all in one directory mounted at ``/mnt``. Mount points that do not exist in an image are left
behind in the layer of the step that mounted them, so the Debian base carries them, empty, itself.

Command line (from ``tests/``): ``python -m cluster.images build [runner] [singleuser] [mlflow] [--pause BINARY]``
prints the image references as JSON on the last line of stdout; exit status 3 means building is
impossible on this machine (the reason is one line on stderr), 1 a failed build (with the tail of its
log). ``push REF... --registry 127.0.0.1:PORT``, ``list`` and ``prune`` also exist.

Every build ends with :func:`prune`: each image keeps the tags just built and its ``KEEP`` newest others
(another checkout, a helper's worktree, may run on them), so that buildah's storage does not grow by an
image of 2 GB for each change to the package until the disk is full.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# Tags of each image kept beside the ones just built, and untagged images (earlier stages) kept.
KEEP = 2
# Bump to give every image a new tag (a change in how they are built that the keys do not see).
RECIPE = "1"
NAMESPACE = "localhost/jmk"
SUITE = "bookworm"
PAUSE_VERSION = "3.4.1"
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SINGLEUSER_BASE_FILE = HERE / "containerfiles" / "singleuser-base.Containerfile"
INSTALL_HINT = "apt-get install -y buildah mmdebstrap skopeo docker-registry"
TOOLS = ("buildah", "mmdebstrap", "skopeo", "docker-registry")

# The base: Debian's minbase (apt, dpkg, passwd, bash, ...), without documentation, man pages and
# translations, as Debian's slim images.
BASE_VARIANT = "minbase"
BASE_PACKAGES: tuple[str, ...] = ()
BASE_DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
# Host apt settings worth keeping inside the images (apt runs there too): a snapshot mirror's expired
# Release files, a proxy.
APT_SETTINGS = ("Acquire::Check-Valid-Until", "Acquire::Check-Date", "Acquire::http::Proxy", "Acquire::Retries")

# Where the generated build configuration is mounted in RUN steps (an empty directory in Debian images).
BUILD_CONFIG_DIR = "/mnt"
PIP_CONF_TARGET = "/etc/pip.conf"
YARNRC_TARGET = "/root/.yarnrc.yml"
# pip settings carried from the host into the builds; the rest (constraint files, caches, logs) name
# host paths or are the host's business.
PIP_SETTINGS = (
    "index-url",
    "extra-index-url",
    "find-links",
    "trusted-host",
    "cert",
    "timeout",
    "default-timeout",
    "retries",
    "no-index",
    "prefer-binary",
)
PIP_LOCAL_SETTINGS = ("index-url", "extra-index-url", "find-links")


@dataclass(frozen=True)
class DockerfileImage:
    """One of the repository's Dockerfiles, the build argument that names its base, and which base we give it."""

    name: str
    dockerfile: str
    base_arg: str
    on_singleuser_base: bool = False  # else Debian's minbase


IMAGES = {
    "runner": DockerfileImage("runner", "docker/runner/Dockerfile", "CUDA_IMAGE"),
    "singleuser": DockerfileImage("singleuser", "docker/singleuser/Dockerfile", "BASE_IMAGE", on_singleuser_base=True),
    "mlflow": DockerfileImage("mlflow", "docker/mlflow/Dockerfile", "BASE_IMAGE", on_singleuser_base=True),
}


class ImagesUnavailable(Exception):
    """Building the images is impossible on this machine; the message is the one-line reason."""


class BuildFailed(Exception):
    """A build ran and failed; the message says which, ``log`` is where its whole output is."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log

    def tail(self, lines: int = 40) -> str:
        """The last lines of the build log, or '' without one."""
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------------------------------- the machine


def cache_dir() -> Path:
    """``~/.cache/jupyter_mlflow_k8s`` (``$XDG_CACHE_HOME`` respected)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "jupyter_mlflow_k8s"


def check_tools() -> str | None:
    """The one-line reason the images cannot be built here, or None when they can."""
    if os.geteuid() != 0:
        return "building the test images needs root (buildah's storage is /var/lib/containers)"
    release = _os_release()
    if release.get("ID") != "debian" or release.get("VERSION_ID") != "12":
        name = release.get("PRETTY_NAME", "an unknown system")
        return f"building the test images needs Debian 12 (its mirror and packages), this is {name}"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"building the test images needs {', '.join(missing)}: {INSTALL_HINT}"
    if shutil.which("runc") is None and shutil.which("crun") is None:
        return f"buildah has no OCI runtime (runc or crun): apt-get install -y runc; {INSTALL_HINT}"
    return None


def _os_release() -> dict[str, str]:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key: value.strip().strip('"') for key, value in pairs}


_lock_depth = 0


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """Hold ``~/.cache/jupyter_mlflow_k8s/images.lock`` (waiting for another builder); reentrant."""
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    path = cache_dir() / "images.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another build of the test images ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


def _say(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def _key(*parts: object) -> str:
    """A short digest of JSON-serialisable inputs."""
    text = json.dumps([RECIPE, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------ host configuration


def host_apt_sources(suite: str = SUITE) -> list[str]:
    """One-line ``deb URI SUITE COMPONENTS`` entries for ``suite`` (and its -updates, -security) from the host."""
    entries: list[tuple[str, str, str]] = []
    apt = Path("/etc/apt")
    lists = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for path in lists:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append((words[1], words[2], " ".join(words[3:])))
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in re.split(r"\n\s*\n", path.read_text()):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    name, value = line.split(":", 1)
                    fields[name.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    for dist in fields.get("suites", "").split():
                        entries.append((uri, dist, fields.get("components", "")))
    wanted = {suite, f"{suite}-updates", f"{suite}-security"}
    lines = []
    for uri, dist, components in entries:
        line = f"deb {uri} {dist} {components}".strip()
        if dist in wanted and line not in lines:
            lines.append(line)
    return lines


def host_apt_options() -> list[str]:
    """The host's values of :data:`APT_SETTINGS`, as ``mmdebstrap --aptopt`` values."""
    try:
        dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return []
    options = []
    for line in dump.splitlines():
        name, _, value = line.partition(" ")
        if name in APT_SETTINGS and value.endswith(";"):
            options.append(f"{name} {value}")
    return options


def host_pip_settings() -> dict[str, str]:
    """The host's pip ``[global]`` settings of :data:`PIP_SETTINGS`, config files then ``PIP_*`` variables."""
    if os.environ.get("PIP_CONFIG_FILE") == os.devnull:
        files: list[Path] = []
    else:
        xdg_dirs = os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
        home = Path.home()
        xdg_home = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
        files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs.split(":") if d]
        files += [Path("/etc/pip.conf"), home / ".pip" / "pip.conf", xdg_home / "pip" / "pip.conf"]
        if os.environ.get("PIP_CONFIG_FILE"):
            files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    settings: dict[str, str] = {}
    for path in files:
        parser = configparser.RawConfigParser()
        with contextlib.suppress(OSError, configparser.Error):
            parser.read(path)
        if parser.has_section("global"):
            settings.update({name.replace("_", "-"): value for name, value in parser.items("global")})
    for name, value in os.environ.items():
        if name.startswith("PIP_"):
            settings[name[4:].lower().replace("_", "-")] = value
    return {name: " ".join(value.split()) for name, value in settings.items() if name in PIP_SETTINGS}


def _local_path(entry: str) -> Path | None:
    """The local path a find-links or index entry names (a path or a file: URL), or None for a remote one."""
    if entry.startswith("file:"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(entry).path))
    if entry.startswith("/"):
        return Path(entry)
    return None


def host_npm_registry() -> str | None:
    """The host's npm registry URL (``npm config get registry``), or None without npm."""
    for name in ("YARN_NPM_REGISTRY_SERVER", "npm_config_registry", "NPM_CONFIG_REGISTRY"):
        if os.environ.get(name):
            return os.environ[name].rstrip("/")
    if shutil.which("npm") is None:
        return None
    result = subprocess.run(["npm", "config", "get", "registry"], capture_output=True, text=True, check=False)
    value = result.stdout.strip()
    return value.rstrip("/") if result.returncode == 0 and value.startswith("http") else None


def host_ca_bundle(pip_settings: dict[str, str] | None = None) -> Path | None:
    """The CA bundle the host trusts for HTTPS (pip's ``cert``, then the usual variables and Debian's file)."""
    pip_settings = host_pip_settings() if pip_settings is None else pip_settings
    candidates = [
        pip_settings.get("cert"),
        os.environ.get("SSL_CERT_FILE"),
        os.environ.get("REQUESTS_CA_BUNDLE"),
        os.environ.get("NODE_EXTRA_CA_CERTS"),
        "/etc/ssl/certs/ca-certificates.crt",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@dataclass
class BuildConfig:
    """What RUN steps get from the host: generated files in ``directory`` and the ``--volume`` mounts."""

    directory: Path
    volumes: list[str]
    mount_points: list[str]  # the targets, for the base image to carry as empty placeholders

    def bud_args(self) -> list[str]:
        """``buildah bud`` arguments for these mounts."""
        return [arg for volume in self.volumes for arg in ("--volume", volume)]


@contextlib.contextmanager
def build_config() -> Iterator[BuildConfig]:
    """Generate the build configuration (pip.conf, .yarnrc.yml, CA bundle) in a temporary directory."""
    settings = host_pip_settings()
    ca = host_ca_bundle(settings)
    with tempfile.TemporaryDirectory(prefix="jmk-build-config-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o755)  # RUN steps as uid 1000 read it too
        volumes = [f"{directory}:{BUILD_CONFIG_DIR}:ro"]
        mount_points: list[str] = []
        local_roots: list[Path] = []
        pip_lines = ["# Generated by tests/cluster/images.py from the host's pip configuration.", "[global]"]
        for name, value in sorted(settings.items()):
            if name == "cert":
                continue
            if name in PIP_LOCAL_SETTINGS:
                kept = []
                for entry in value.split():
                    path = _local_path(entry)
                    if path is None:
                        kept.append(entry)
                    elif path.exists():
                        # A file index's pages point at ../../files: mount the directory above simple/.
                        root = path.parent if path.name == "simple" or path.is_file() else path
                        if root not in local_roots:
                            local_roots.append(root)
                        kept.append(entry)
                if not kept:
                    continue
                value = " ".join(kept)
            pip_lines.append(f"{name} = {value}")
        if ca is not None:
            shutil.copyfile(ca, directory / "ca.pem")
            (directory / "ca.pem").chmod(0o644)
            pip_lines.append(f"cert = {BUILD_CONFIG_DIR}/ca.pem")
        (directory / "pip.conf").write_text("\n".join(pip_lines) + "\n")
        volumes.append(f"{directory / 'pip.conf'}:{PIP_CONF_TARGET}:ro")
        mount_points.append(PIP_CONF_TARGET)
        for root in local_roots:
            volumes.append(f"{root}:{root}:ro")
            mount_points.append(f"{root}/")
        yarn = ["# Generated by tests/cluster/images.py: jlpm (yarn 3) with the host's npm registry.",
                "enableTelemetry: false"]  # fmt: skip
        registry = host_npm_registry()
        if registry:
            yarn.append(f"npmRegistryServer: {json.dumps(registry)}")
        if ca is not None:
            yarn.append(f'caFilePath: "{BUILD_CONFIG_DIR}/ca.pem"')
        (directory / "yarnrc.yml").write_text("\n".join(yarn) + "\n")
        volumes.append(f"{directory / 'yarnrc.yml'}:{YARNRC_TARGET}:ro")
        mount_points.append(YARNRC_TARGET)
        for path in directory.iterdir():
            path.chmod(0o644)
        yield BuildConfig(directory, volumes, mount_points)


# ------------------------------------------------------------------------------------------ buildah


def image_exists(ref: str) -> bool:
    """Whether ``ref`` is an image in buildah's storage."""
    result = subprocess.run(
        ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return result.returncode == 0


SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def image_size(ref: str) -> int:
    """The unpacked size of ``ref`` in bytes (the sum of its layers), 0 if unknown."""
    result = subprocess.run(["buildah", "images", "--json", ref], capture_output=True, text=True, check=False)
    with contextlib.suppress(ValueError, IndexError, KeyError, TypeError):
        size = json.loads(result.stdout)[0]["size"]  # buildah 1.28 writes it for people: "2.35 GB"
        if isinstance(size, (int, float)):
            return int(size)
        number, unit = str(size).split()
        return int(float(number) * SIZE_UNITS[unit.upper()])
    return 0


def _run_logged(argv: Sequence[str], log: Path, label: str, *, stdin: int | None = None) -> None:
    """Run ``argv`` with its output in ``log`` (build steps echoed to stderr); BuildFailed if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"$ {shlex.join(argv)}\n")
        out.flush()
        process = subprocess.Popen(
            argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            start_new_session=True,
        )  # fmt: skip
        assert process.stdout is not None
        try:
            for line in process.stdout:
                out.write(line)
                if line.startswith("STEP "):
                    _say(f"{label}: {line.strip()[:150]}")
            code = process.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            raise
    if code != 0:
        raise BuildFailed(f"{label}: {argv[0]} {argv[1]} failed with exit status {code} (log: {log})", log)


def _log_path(name: str, key: str) -> Path:
    path = cache_dir() / "images" / f"{name}-{key}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    return path


def _report(name: str, ref: str, started: float, log: Path | None) -> None:
    seconds = time.monotonic() - started
    if log is None:
        _say(f"{name}: {ref} present, nothing to build ({seconds:.2f} s)")
        return
    text = log.read_text(errors="replace")
    steps = len(re.findall(r"^STEP \d+/\d+: ", text, re.MULTILINE))
    cached = len(re.findall(r"^--> Using cache ", text, re.MULTILINE))  # buildah says it for every cached step
    how = f", {cached} of {steps} steps from buildah's cache" if steps else ""
    size = image_size(ref) / 1e6
    _say(f"{name}: built {ref} in {seconds:.1f} s{how}, {size:.0f} MB")


def _bud(
    name: str, key: str, containerfile: Path, context: Path, build_args: dict[str, str], ref: str, config: BuildConfig
) -> Path:
    """``buildah bud --layers`` with the host network and ``config``'s mounts; returns the log."""
    log = _log_path(name, key)
    argv = ["buildah", "bud", "--layers", "--network", "host", "--pull=never", "--format", "oci"]
    argv += ["--file", str(containerfile), "--tag", ref, "--label", f"io.jmk.key={key}"]
    for arg, value in sorted(build_args.items()):
        argv += ["--build-arg", f"{arg}={value}"]
    argv += config.bud_args()
    argv.append(str(context))
    _run_logged(argv, log, name)
    return log


# ------------------------------------------------------------------------------------------ base images


def base_key(mount_points: Iterable[str]) -> str:
    """The Debian base's key: suite, variant, packages, dpkg options, and the placeholders it carries."""
    return _key("bookworm", SUITE, BASE_VARIANT, BASE_PACKAGES, BASE_DPKG_OPTIONS, BASE_ENV, sorted(mount_points))


def build_base(config: BuildConfig) -> str:
    """Debian 12 minbase from the host's Debian mirror (mmdebstrap), as ``localhost/jmk/bookworm:<key>``."""
    key = base_key(config.mount_points)
    ref = f"{NAMESPACE}/bookworm:{key}"
    started = time.monotonic()
    if image_exists(ref):
        _report("bookworm", ref, started, None)
        return ref
    sources = host_apt_sources()
    if not sources:
        raise ImagesUnavailable(f"the host's apt sources name no Debian {SUITE} mirror (/etc/apt/sources.list*)")
    log = _log_path("bookworm", key)
    with tempfile.TemporaryDirectory(prefix="jmk-bookworm-", dir="/var/tmp") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        argv = ["mmdebstrap", f"--variant={BASE_VARIANT}", "--format=tar", "--skip=output/dev"]
        argv += [f"--aptopt={option}" for option in host_apt_options()]
        argv += [f"--dpkgopt={option}" for option in BASE_DPKG_OPTIONS]
        if BASE_PACKAGES:
            argv.append(f"--include={','.join(BASE_PACKAGES)}")
        argv += [SUITE, str(tarball), *sources]
        _say(f"bookworm: mmdebstrap {SUITE} from {', '.join(sorted({s.split()[1] for s in sources}))}")
        _run_logged(argv, log, "bookworm", stdin=subprocess.DEVNULL)
        container = _buildah("from", "scratch").strip()
        try:
            _buildah("add", container, str(tarball), "/")
            mount = Path(_buildah("mount", container).strip())
            for point in config.mount_points:  # empty mount points, so that no build step adds them
                target = mount / point.strip("/")
                if point.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.touch()
            _buildah("umount", container)
            config_args = [arg for name, value in BASE_ENV.items() for arg in ("--env", f"{name}={value}")]
            _buildah("config", *config_args, "--cmd", "bash", "--label", f"io.jmk.key={key}", container)
            _buildah("commit", "--rm", container, ref)
        except BaseException:
            subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
            raise
    _report("bookworm", ref, started, log)
    return ref


def _buildah(*args: str) -> str:
    result = subprocess.run(["buildah", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildFailed(f"buildah {args[0]} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def build_singleuser_base(base: str, config: BuildConfig, root: Path = REPO) -> str:
    """The stand-in for a Jupyter Docker Stacks image, ``localhost/jmk/singleuser-base:<key>``."""
    constraints = root / "constraints.txt"
    key = _key("singleuser-base", base, SINGLEUSER_BASE_FILE.read_text(), _file_digest(constraints))
    ref = f"{NAMESPACE}/singleuser-base:{key}"
    started = time.monotonic()
    if image_exists(ref):
        _report("singleuser-base", ref, started, None)
        return ref
    log = _bud("singleuser-base", key, SINGLEUSER_BASE_FILE, root, {"BASE_IMAGE": base}, ref, config)
    _report("singleuser-base", ref, started, log)
    return ref


# --------------------------------------------------------------------------- the repository's Dockerfiles


def dockerignore_patterns(root: Path) -> list[str]:
    """The patterns of ``root/.dockerignore`` (comments and blank lines dropped)."""
    try:
        lines = (line.strip() for line in (root / ".dockerignore").read_text().splitlines())
    except OSError:
        return []
    return [line for line in lines if line and not line.startswith("#")]


def _match_parts(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match_parts(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _match_parts(pattern[1:], parts[1:])


def ignored(path: str, patterns: Sequence[str]) -> bool:
    """Whether ``.dockerignore`` leaves ``path`` (relative to the context) out, as Docker reads it.

    A pattern matches the path or a directory above it; ``*`` stays within one path element and ``**``
    spans any number; the last matching pattern decides, ``!`` ones re-include.
    """
    parts = [part for part in path.split("/") if part and part != "."]
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = [part for part in raw.lstrip("!").strip().split("/") if part and part != "."]
        if pattern and any(_match_parts(pattern, parts[:i]) for i in range(1, len(parts) + 1)):
            result = not negate
    return result


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(KEYWORD, arguments)`` of a Dockerfile, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, arguments = current.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    return instructions


def context_sources(dockerfile: Path) -> list[str]:
    """What the Dockerfile's COPY and ADD steps take from the build context (not ``--from`` stages)."""
    sources: list[str] = []
    for keyword, arguments in dockerfile_instructions(dockerfile.read_text()):
        if keyword not in {"COPY", "ADD"}:
            continue
        words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
        if any(word.startswith("--from") for word in words):
            continue
        sources += [word for word in words if not word.startswith("--")][:-1]
    return sources


def context_digest(root: Path, sources: Iterable[str]) -> str:
    """A digest of the context files under ``sources`` that ``.dockerignore`` lets through (paths, modes, contents)."""
    patterns = dockerignore_patterns(root)
    digest = hashlib.sha256()
    files: set[Path] = set()
    for source in sources:
        for match in sorted(root.glob(source.strip("/"))) or [root / source]:
            if match.is_dir() and not match.is_symlink():
                for directory, dirs, names in os.walk(match):
                    base = Path(directory)
                    dirs[:] = sorted(d for d in dirs if not ignored(str((base / d).relative_to(root)), patterns))
                    files.update(base / n for n in names if not ignored(str((base / n).relative_to(root)), patterns))
            elif match.exists() or match.is_symlink():
                files.add(match)
    for path in sorted(files):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            digest.update(f"L {relative} {os.readlink(path)}\n".encode())
        elif path.is_file():
            executable = "x" if path.stat().st_mode & 0o111 else "-"
            digest.update(f"F {relative} {executable} {_file_digest(path)}\n".encode())
    return digest.hexdigest()


def image_key(image: DockerfileImage, base: str, root: Path = REPO) -> str:
    """The key of one of the Dockerfiles' images: the Dockerfile, its context files, its base."""
    dockerfile = root / image.dockerfile
    return _key(image.name, dockerfile.read_text(), context_digest(root, context_sources(dockerfile)),
                {image.base_arg: base})  # fmt: skip


# nvidia-ml-py (pynvml, the GPU system metrics) is a small pure-Python wheel from the index, not a CUDA library
_TORCH_DOWNLOAD = re.compile(r"^\s*Downloading \S*\b(?:torch-\d|nvidia[-_](?!ml[-_]py))", re.MULTILINE)
_TORCH_LOCAL = re.compile(r"^\s*Processing (/\S*torch-\S+\.whl)", re.MULTILINE)


def _check_torch(name: str, log: Path) -> None:
    """Fail if the build downloaded torch (or CUDA libraries) instead of taking the wheel on disk."""
    text = log.read_text(errors="replace")
    downloaded = _TORCH_DOWNLOAD.search(text)
    if downloaded:
        raise BuildFailed(f"{name}: torch came from the network, not the host's wheels: {downloaded.group(0).strip()}",
                          log)  # fmt: skip
    local = _TORCH_LOCAL.search(text)
    if local:
        _say(f"{name}: torch from {local.group(1)}")


def build_image(name: str, base: str, config: BuildConfig, root: Path = REPO) -> str:
    """Build ``docker/<name>/Dockerfile`` unchanged on ``base``, as ``localhost/jmk/<name>:<key>``."""
    image = IMAGES[name]
    key = image_key(image, base, root)
    ref = f"{NAMESPACE}/{name}:{key}"
    started = time.monotonic()
    if image_exists(ref):
        _report(name, ref, started, None)
        return ref
    log = _bud(name, key, root / image.dockerfile, root, {image.base_arg: base}, ref, config)
    _check_torch(name, log)
    _report(name, ref, started, log)
    return ref


def build(
    names: Sequence[str] = ("runner", "singleuser"), root: Path = REPO, pause: Path | None = None
) -> dict[str, str]:
    """Build what is missing of the named images (and the pause image); returns name -> local reference.

    Raises ImagesUnavailable (with :func:`check_tools`'s line) when building is impossible here and
    BuildFailed when a build fails.
    """
    reason = check_tools()
    if reason:
        raise ImagesUnavailable(reason)
    unknown = sorted(set(names) - set(IMAGES))
    if unknown:
        raise ValueError(f"unknown images {unknown}; known: {sorted(IMAGES)}")
    refs: dict[str, str] = {}
    with build_lock(), build_config() as config:
        base = build_base(config)
        bases = {base}
        singleuser_base = ""
        for name in names:
            image_base = base
            if IMAGES[name].on_singleuser_base:
                singleuser_base = singleuser_base or build_singleuser_base(base, config, root)
                image_base = singleuser_base
            bases.add(image_base)
            refs[name] = build_image(name, image_base, config, root)
        if pause is not None:
            refs["pause"] = build_pause(pause)
        prune([*refs.values(), *bases])
    return refs


def prune(current: Iterable[str], keep: int = KEEP) -> list[str]:
    """Remove our images that are neither in ``current`` nor among the ``keep`` newest of their name.

    Untagged images (the wheel stage of a multi-stage build) keep their ``keep`` newest too: the newest
    holds buildah's layer cache for the next build. Returns what was removed (references or IDs).
    """
    result = subprocess.run(["buildah", "images", "--json"], capture_output=True, text=True, check=False)
    try:
        images = json.loads(result.stdout or "[]") or []
    except ValueError:
        return []
    wanted = set(current)
    by_repository: dict[str, list[tuple[int, str]]] = {}
    for image in images:
        created = int(image.get("created") or 0)
        names = [name for name in image.get("names") or [] if name.startswith(f"{NAMESPACE}/")]
        if not image.get("names"):
            by_repository.setdefault("", []).append((created, str(image.get("id", ""))))
        for name in names:
            by_repository.setdefault(name.rpartition(":")[0], []).append((created, name))
    doomed = []
    for entries in by_repository.values():
        others = sorted((entry for entry in entries if entry[1] not in wanted), reverse=True)
        doomed += [ref for _, ref in others[keep:] if ref]
    removed = []
    for ref in doomed:
        if subprocess.run(["buildah", "rmi", ref], capture_output=True, check=False).returncode == 0:
            removed.append(ref)
    if removed:
        _say(f"pruned {len(removed)} older images: {' '.join(removed)}")
    return removed


def build_pause(pause_binary: Path) -> str:
    """An image of the static ``pause_binary`` alone, as /pause and its entrypoint, run as 65535 like upstream's.

    Tagged ``localhost/jmk/pause:3.4.1-<digest of the binary>``; returns that reference.
    """
    reason = check_tools()
    if reason:
        raise ImagesUnavailable(reason)
    key = _key("pause", _file_digest(pause_binary))
    ref = f"{NAMESPACE}/pause:{PAUSE_VERSION}-{key}"
    started = time.monotonic()
    with build_lock():
        if image_exists(ref):
            _report("pause", ref, started, None)
            return ref
        container = _buildah("from", "scratch").strip()
        try:
            _buildah("copy", "--chmod", "0755", container, str(pause_binary), "/pause")
            _buildah("config", "--entrypoint", '["/pause"]', "--cmd", "", "--user", "65535:65535",
                     "--label", f"io.jmk.key={key}", container)  # fmt: skip
            _buildah("commit", "--rm", container, ref)
        except BaseException:
            subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
            raise
    _say(f"pause: built {ref} in {time.monotonic() - started:.1f} s")
    return ref


def list_images() -> list[dict[str, object]]:
    """Our images in buildah's storage: reference, id, size in bytes."""
    result = subprocess.run(["buildah", "images", "--json"], capture_output=True, text=True, check=False)
    rows: list[dict[str, object]] = []
    with contextlib.suppress(ValueError):
        for image in json.loads(result.stdout or "[]") or []:
            for name in image.get("names") or []:
                if name.startswith(f"{NAMESPACE}/"):
                    rows.append({"ref": name, "id": image.get("id", "")[:12], "size": int(image.get("size", 0))})
    return sorted(rows, key=lambda row: str(row["ref"]))


# ------------------------------------------------------------------------------------------ registry


def remote_ref(local_ref: str, registry: str) -> str:
    """``localhost/jmk/runner:<key>`` -> ``<registry>/jmk/runner:<key>``."""
    return f"{registry}/{local_ref.removeprefix('localhost/')}"


_MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")


def image_id(ref: str) -> str:
    """The ID of ``ref`` in buildah's storage (``sha256:`` + the digest of its config), '' if it is not there."""
    result = subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True, text=True, check=False)
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return "sha256:" + str(json.loads(result.stdout)["FromImageID"])
    return ""


def registry_config_digest(target: str) -> str:
    """The config digest of the manifest ``target`` (``HOST:PORT/REPO:TAG``) names in a plain-HTTP registry, or ''."""
    host, _, rest = target.partition("/")
    repository, _, tag = rest.rpartition(":")
    request = urllib.request.Request(
        f"http://{host}/v2/{repository}/manifests/{tag}",
        headers={"Accept": ", ".join(_MANIFEST_TYPES)},
    )
    errors = (OSError, ValueError, KeyError, TypeError, urllib.error.URLError)
    with contextlib.suppress(*errors), urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["config"]["digest"])
    return ""


def push(local_ref: str, registry: str) -> str:
    """Copy ``local_ref`` to the plain-HTTP ``registry`` (``127.0.0.1:PORT``); returns the pullable reference.

    Nothing is sent when the registry already has that tag for this very image (same config digest): the
    registry's storage outlives its port, which changes each session, and buildah would otherwise
    compress every layer again to find out that the registry has it (its blob cache is per host:port).
    Layers are gzip-compressed (``--disable-compression`` has no effect on a registry destination here).
    """
    target = remote_ref(local_ref, registry)
    started = time.monotonic()
    local_id = image_id(local_ref)
    if not local_id:
        raise BuildFailed(f"pushing {local_ref}: no such image in buildah's storage")
    if registry_config_digest(target) == local_id:
        _say(f"{target} already in the registry ({time.monotonic() - started:.2f} s)")
        return target
    argv = ["buildah", "push", "--quiet", "--tls-verify=false", local_ref, f"docker://{target}"]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildFailed(f"pushing {local_ref} to {registry} failed: {result.stderr.strip()[-2000:]}")
    _say(f"pushed {target} in {time.monotonic() - started:.1f} s")
    return target


def write_registry_config(path: Path, root_dir: Path, port: int) -> None:
    """A docker-registry (distribution 2.8) config: filesystem storage in ``root_dir``, HTTP on 127.0.0.1, no auth."""
    root_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "version: 0.1\n"
        "log: {level: warn, accesslog: {disabled: true}}\n"
        f"storage: {{filesystem: {{rootdirectory: {json.dumps(str(root_dir))}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}', secret: {json.dumps(hashlib.sha256(os.urandom(16)).hexdigest())}}}\n"
    )


def start_registry(root_dir: Path, port: int, timeout: float = 20.0) -> subprocess.Popen[bytes]:
    """Start ``docker-registry`` on ``127.0.0.1:port`` storing in ``root_dir``; returns once /v2/ answers.

    Its config and log are ``registry-<port>.yml``/``.log`` next to ``root_dir``. Stop it with
    :func:`stop_registry`. Raises RuntimeError (with the log's tail) if it exits or does not answer in time.
    """
    if shutil.which("docker-registry") is None:
        raise ImagesUnavailable(f"no docker-registry: {INSTALL_HINT}")
    root_dir.mkdir(parents=True, exist_ok=True)
    config = root_dir.parent / f"{root_dir.name}-{port}.yml"
    log = root_dir.parent / f"{root_dir.name}-{port}.log"
    write_registry_config(config, root_dir, port)
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/v2/"
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {process.returncode}: {_tail(log)}")
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return process
        if time.monotonic() > deadline:
            stop_registry(process)
            raise RuntimeError(f"docker-registry did not answer {url} within {timeout:.0f} s: {_tail(log)}")
        time.sleep(0.05)


def stop_registry(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a registry from :func:`start_registry`: SIGTERM, SIGKILL after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ------------------------------------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> int:
    """``build``, ``push``, ``list`` and ``check``; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m cluster.images", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build what is missing; print the references as JSON")
    build_cmd.add_argument("names", nargs="*", metavar="NAME", help=f"images to build (default: {' '.join(IMAGES)})")
    build_cmd.add_argument("--pause", type=Path, help="also build the pause image from this static binary")
    build_cmd.add_argument("--root", type=Path, default=REPO, help="the repository (build context)")
    push_cmd = commands.add_parser("push", help="push local images to a registry; print the references as JSON")
    push_cmd.add_argument("refs", nargs="+")
    push_cmd.add_argument("--registry", required=True, help="HOST:PORT of a plain-HTTP registry")
    commands.add_parser("list", help="our images in buildah's storage")
    commands.add_parser("prune", help=f"remove all but the {KEEP} newest tags of each image")
    commands.add_parser("check", help="print why images cannot be built here (exit 3), or nothing")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            reason = check_tools()
            if reason:
                print(reason, file=sys.stderr)
                return 3
            return 0
        if args.command == "list":
            for row in list_images():
                print(f"{row['ref']}  {row['id']}  {int(str(row['size'])) / 1e6:.0f} MB")
            return 0
        if args.command == "prune":
            prune(())
            return 0
        if args.command == "push":
            print(json.dumps({ref: push(ref, args.registry) for ref in args.refs}))
            return 0
        names = args.names or list(IMAGES)
        pause = args.pause.resolve() if args.pause else None
        print(json.dumps(build(names, args.root.resolve(), pause)))
        return 0
    except ImagesUnavailable as error:
        print(str(error), file=sys.stderr)
        return 3
    except BuildFailed as error:
        tail = error.tail()
        print(f"{error}\n{tail}" if tail else str(error), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
