"""The documentation site: it builds with warnings as errors, and its generated references are complete.

The site is built once into a temporary directory with ``sphinx -W``. The checks find the magics,
the configurable traits and the user-facing errors by introspecting the package (not through the
docs extension), so a new flag, trait or error message that the pages miss, or a flag or trait
without help text, fails here.
"""

from __future__ import annotations

import ast
import html
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sphinx", reason="the docs extra is not installed (pip install -e '.[docs]')")
pytest.importorskip("myst_parser", reason="the docs extra is not installed (pip install -e '.[docs]')")

import jupyter_mlflow_k8s
from jupyter_mlflow_k8s.exceptions import JMKError

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGE_DIR = Path(jupyter_mlflow_k8s.__file__).parent


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, f"sphinx -W failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def text_of(fragment: str) -> str:
    """Visible text of an HTML fragment, whitespace collapsed."""
    fragment = re.sub(r"<(script|style)\b.*?</\1>", " ", fragment, flags=re.S)
    fragment = re.sub(r"</?(code|span|em|strong|a|small|kbd)\b[^>]*>", "", fragment)  # inline: no space
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def squash(text: str) -> str:
    return " ".join(text.split())


def sections(page: str) -> dict[str, str]:
    """``{section id: its HTML up to the next section}``."""
    parts = re.split(r'<section id="([^"]+)">', page)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def all_modules() -> list[Any]:
    modules: list[Any] = [jupyter_mlflow_k8s]
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="jupyter_mlflow_k8s."):
        if info.name.endswith(".__main__"):
            continue
        modules.append(importlib.import_module(info.name))
    return modules


def test_site_pages(site: Path) -> None:
    for page in ("index", "getting-started", "magics", "configuration", "architecture", "troubleshooting",
                 "kubernetes", "pipelines", "serving", "sidebar", "benchmarks"):
        assert (site / f"{page}.html").is_file(), page
    index = (site / "index.html").read_text(encoding="utf-8")
    for page in ("getting-started", "magics", "configuration", "troubleshooting", "architecture"):
        assert f'href="{page}.html"' in index, page
    assert (site / "_images" / "sidebar.png").is_file()


class _Recorder:
    def __init__(self) -> None:
        self.classes: list[type] = []

    def register_magics(self, cls: type) -> None:
        self.classes.append(cls)


def test_magics_reference_lists_every_magic_and_flag(site: Path) -> None:
    recorder = _Recorder()
    jupyter_mlflow_k8s.load_ipython_extension(recorder)
    assert recorder.classes
    found = sections((site / "magics.html").read_text(encoding="utf-8"))
    seen = 0
    for cls in recorder.classes:
        for kind, table in cls.magics.items():  # type: ignore[attr-defined]
            for name, attr in table.items():
                seen += 1
                spelled = ("%%" if kind == "cell" else "%") + name
                anchor = f"magic-{name.replace('_', '-')}"  # docutils ids spell _ as -
                assert anchor in found, f"{spelled} is missing from magics.html"
                text = text_of(found[anchor])
                assert spelled in text
                func = getattr(cls, attr)
                doc = inspect.getdoc(func.__wrapped__ if hasattr(func, "parser") else func) or ""
                assert doc, f"{spelled} has no docstring"
                first_line = squash(doc.split("\n\n")[0]).replace("``", "")
                assert first_line in text, f"{spelled}: its docstring's summary is not on the page"
                for action in getattr(getattr(func, "parser", None), "_actions", []):
                    if "-h" in action.option_strings:
                        continue
                    flag = action.option_strings[0] if action.option_strings else (action.metavar or action.dest)
                    assert action.help and action.help.strip(), f"{spelled} {flag} has no help text"
                    assert flag in text, f"{spelled} {flag} is not on the page"
                    assert squash(action.help) in text, f"{spelled} {flag}: its help is not on the page"
    assert seen >= 9


def test_configuration_reference_lists_every_trait(site: Path) -> None:
    from traitlets import HasTraits

    found = sections((site / "configuration.html").read_text(encoding="utf-8"))
    checked = 0
    for module in all_modules():
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not issubclass(cls, HasTraits):
                continue
            for name, trait in cls.class_traits(config=True).items():
                owner = next(k for k in cls.__mro__ if name in vars(k))
                if not owner.__module__.startswith("jupyter_mlflow_k8s"):
                    continue
                setting = f"c.{cls.__name__}.{name}"
                assert trait.help and trait.help.strip(), f"{setting} has no help text"
                key = f"config-{cls.__name__}-{name}".lower().replace("_", "-")  # as docutils makes ids
                assert key in found, f"{setting} is missing from configuration.html"
                text = text_of(found[key])
                assert setting in text
                assert squash(trait.help) in text, f"{setting}: its help is not on the page"
                assert type(trait).__name__ in text, f"{setting}: its type is not on the page"
                checked += 1
    for expected in ("JMKSettings", "LocalBackend", "KubernetesBackend", "JMKExtensionApp"):
        assert f"config-{expected.lower()}" in found, expected
    assert checked >= 30


def user_error_raises() -> list[tuple[str, int, str]]:
    """``(path, line, class)`` of every ``raise SomeError(...)`` of a JMKError subclass in the package."""
    sites = []
    for module in all_modules():
        path = Path(module.__file__)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            func = node.exc.func
            target = None
            if isinstance(func, ast.Name):
                target = getattr(module, func.id, None)
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                target = getattr(getattr(module, func.value.id, None), func.attr, None)
            if isinstance(target, type) and issubclass(target, JMKError):
                sites.append((path.relative_to(PACKAGE_DIR.parent).as_posix(), node.exc.lineno, target.__name__))
    return sites


def test_troubleshooting_lists_every_user_error(site: Path) -> None:
    page = (site / "troubleshooting.html").read_text(encoding="utf-8")
    text = text_of(page)
    sites = user_error_raises()
    assert len(sites) >= 100
    missing = [f"{path}:{line} ({cls})" for path, line, cls in sites if f"{path}:{line}" not in text]
    assert not missing, "raise sites missing from troubleshooting.html:\n" + "\n".join(missing)
    found = sections(page)
    for group in ("errors-magics", "errors-cli", "errors-pipelines", "errors-kubernetes", "errors-serving",
                  "errors-sidebar", "errors-jobs"):
        assert group in found, group
    # a message is shown as the user sees it, not as source code
    assert "No job <job_id>. Run %jobs (or `jmk jobs`) to list jobs." in text
    assert "<flag> <text> is not a duration." in text
