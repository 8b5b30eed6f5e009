"""``ModelRef``: the one parser and printer of ``models:/`` URIs (pure, no MLflow)."""

from __future__ import annotations

import pytest

from jupyter_mlflow_k8s.errors import JMKUsageError
from jupyter_mlflow_k8s.tracking.refs import ModelRef, check_alias, check_version


def test_parses_version_alias_and_latest() -> None:
    assert ModelRef.parse("models:/iris/3") == ModelRef("iris", version="3")
    assert ModelRef.parse("models:/iris@champion") == ModelRef("iris", alias="champion")
    assert ModelRef.parse("models:/iris/latest") == ModelRef("iris", version="latest")


def test_names_may_hold_at_signs_and_quotes() -> None:
    # MLflow forbids '/' and ':' in a name, not '@' or quotes: split at the only '/', else the last '@'.
    assert ModelRef.parse("models:/a@b@prod") == ModelRef("a@b", alias="prod")
    assert ModelRef.parse("models:/a@b/2") == ModelRef("a@b", version="2")
    assert ModelRef.parse("models:/o'brien/1").name == "o'brien"
    assert ModelRef.parse('models:/say "hi"@prod').name == 'say "hi"'


@pytest.mark.parametrize("bad", ["runs:/abc/model", "iris@champion", "models:/iris", "models:/iris/x",
                                 "models:/iris/1/2", "models:/@a", "models:/iris@", "models:/iris/", "models:/"])
def test_anything_else_says_what_to_write(bad: str) -> None:
    with pytest.raises(JMKUsageError, match=r"Write models:/NAME@ALIAS or models:/NAME/VERSION \(VERSION a number"):
        ModelRef.parse(bad)


def test_renders_back_and_pins() -> None:
    for uri in ("models:/iris/3", "models:/iris@prod", "models:/iris/latest", "models:/a@b@c"):
        assert ModelRef.parse(uri).uri == uri
        assert str(ModelRef.parse(uri)) == uri
    assert ModelRef.parse("models:/iris/03").uri == "models:/iris/3"
    assert ModelRef.parse("models:/iris@prod").pinned(4).uri == "models:/iris/4"
    assert ModelRef.parse("models:/iris/4").is_pinned
    assert not ModelRef.parse("models:/iris/latest").is_pinned
    assert not ModelRef.parse("models:/iris@prod").is_pinned


def test_maybe_leaves_other_uris_alone() -> None:
    assert ModelRef.maybe("runs:/abc/model") is None
    assert ModelRef.maybe("/tmp/model") is None
    assert ModelRef.maybe("models:/iris@prod") == ModelRef("iris", alias="prod")
    with pytest.raises(JMKUsageError):
        ModelRef.maybe("models:/iris")


def test_endpoint_stem_and_selector() -> None:
    # What serving/manager.default_name and serving/kubernetes.model_identity compute today.
    assert ModelRef.parse("models:/iris@prod").endpoint_stem() == "iris-prod"
    assert ModelRef.parse("models:/iris/2").endpoint_stem() == "iris-v2"
    assert ModelRef.parse("models:/iris/latest").endpoint_stem() == "iris-latest"
    assert ModelRef.parse("models:/iris@prod").selector == "prod"
    assert ModelRef.parse("models:/iris/2").selector == "2"


def test_alias_and_version_rules() -> None:
    check_alias("champion")
    for bad in ("", "has space", "a.b", "x" * 256):
        with pytest.raises(JMKUsageError, match="letters, digits, _ and - only"):
            check_alias(bad)
    with pytest.raises(JMKUsageError, match="reserved"):
        check_alias("v3")
    assert check_version(" 3 ", "iris") == "3"
    with pytest.raises(JMKUsageError, match="a version is a number"):
        check_version("three", "iris")
