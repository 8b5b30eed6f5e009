"""Triggers carried to the scheduler on a cluster: a ConfigMap each, mounted, synced into the claim's state.

The ConfigMaps are written into a folder as the kubelet projects a ConfigMap volume's ``items``, so
the sync and the evaluator read exactly what a pod would; the real node runs the same in
``test_k8s_trigger_scheduler.py``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from k8s_manifests import validate_manifest
from test_pipeline_triggers import evaluator, put, wait_run_ended

from jupyter_mlflow_k8s.cli import main as jmk
from jupyter_mlflow_k8s.exceptions import JMKUsageError
from jupyter_mlflow_k8s.k8s.pods import PodSettings
from jupyter_mlflow_k8s.k8s.scheduler import TRIGGERS_MOUNT, MountedFiles, build_scheduler_manifests
from jupyter_mlflow_k8s.pipelines.engine import PipelineEngine
from jupyter_mlflow_k8s.pipelines.triggers import (
    TriggerEvaluator,
    add_trigger,
    build_trigger,
    get_trigger,
    list_triggers,
    load_cursor,
    read_history,
)
from jupyter_mlflow_k8s.pipelines.triggers.carry import carry, chosen, sync_carried
from jupyter_mlflow_k8s.pipelines.triggers.store import save_cursor


def project(files: MountedFiles, folder: Path) -> Path:
    """Write a ConfigMap's items under ``folder/<its folder>`` as the kubelet mounts them."""
    data, binary = files.configmap.get("data", {}), files.configmap.get("binaryData", {})
    target = folder / files.folder
    for item in files.items:
        content = data[item["key"]].encode() if item["key"] in data else base64.b64decode(binary[item["key"]])
        path = target / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return target


def with_output(path: Path) -> None:
    """Give the notebook's code cells a large output (carried without it)."""
    document = nbformat.read(path, as_version=4)
    for cell in document.cells:
        if cell.cell_type == "code":
            cell.outputs = [nbformat.v4.new_output("stream", text="x" * 2_000_000)]
    nbformat.write(document, path)


def test_each_trigger_is_a_configmap_of_its_definition_and_pipeline_mounted_in_a_folder_of_its_own(
        state_dir: Path, retrain: Path) -> None:
    with_output(retrain.parent / "train.ipynb")
    add_trigger(build_trigger(retrain, name="new-data", on_new_objects="s3://bucket/in/", min_new=3))
    add_trigger(build_trigger(retrain, name="later", on_new_objects="s3://bucket/later/", mode="suggest"))
    carried = carry(chosen([]), scheduler="jmk-scheduler", namespace="team-a", labels={"team": "a"})
    assert [files.folder for files in carried] == ["later", "new-data"]
    settings = PodSettings(namespace="team-a", image="registry.example/jmk-runner:1.0")
    manifests = build_scheduler_manifests(settings, state_claim="jmk-state", carried=carried)
    assert [m["kind"] for m in manifests] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "ConfigMap",
                                              "Deployment"]
    for manifest in manifests:
        validate_manifest(manifest)
    configmap = manifests[4]
    assert configmap["metadata"]["name"] == "jmk-scheduler-trigger-new-data"
    assert configmap["metadata"]["labels"]["jmk.io/trigger"] == "new-data"
    assert configmap["metadata"]["labels"]["team"] == "a"
    definition = json.loads(configmap["data"]["trigger.json"])
    assert definition["pipeline"] == f"{TRIGGERS_MOUNT}/new-data/pipeline.yaml" and definition["min_new"] == 3
    assert sum(len(v) for v in configmap["data"].values()) < 10_000  # the notebook without its 2 MB output
    pod = manifests[-1]["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"][-2:] == ["--triggers-from", TRIGGERS_MOUNT]
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == configmap["metadata"]["name"])
    assert sorted(i["path"] for i in volume["configMap"]["items"]) == ["pipeline.yaml", "train.ipynb", "trigger.json"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert mount == {"name": volume["name"], "mountPath": f"{TRIGGERS_MOUNT}/new-data", "readOnly": True}

    with pytest.raises(JMKUsageError, match="two ConfigMaps for the folder 'later'"):
        build_scheduler_manifests(settings, state_claim="jmk-state", carried=[carried[0], carried[0]])
    with pytest.raises(JMKUsageError, match="not in the scheduler's namespace 'team-b'"):
        build_scheduler_manifests(PodSettings(namespace="team-b", image="r/x:1"), state_claim="s", carried=carried)


def test_a_pipeline_too_large_or_gone_is_said_before_anything_is_written(
        state_dir: Path, retrain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add_trigger(build_trigger(retrain, name="new-data", on_new_objects="s3://bucket/in/"))
    big = retrain.parent / "big.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = '" + "y" * 1_100_000 + "'")]), big)
    retrain.write_text(retrain.read_text() + "  big: {notebook: big.ipynb, needs: [train]}\n")
    assert jmk(["scheduler", "--print-manifests", "--state-claim", "jmk-state"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "more than the 1000 KiB a ConfigMap can carry" in captured.err
    assert "Trigger new-data cannot be carried: put its pipeline on the state claim" in captured.err
    retrain.unlink()
    assert jmk(["scheduler", "--print-manifests", "--state-claim", "jmk-state"]) == 2
    assert "trigger new-data: cannot read its pipeline" in capsys.readouterr().err


def test_jmk_scheduler_carries_every_trigger_or_those_named(
        state_dir: Path, retrain: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    monkeypatch.setenv("JMK_K8S_NAMESPACE", "team-b")
    for name in ("one", "two"):
        add_trigger(build_trigger(retrain, name=name, on_new_objects=f"s3://bucket/{name}/"))

    def configmaps(*flags: str) -> list[str]:
        assert jmk(["scheduler", "--print-manifests", "--state-claim", "jmk-state", *flags]) == 0
        return [m["metadata"]["name"] for m in yaml.safe_load_all(capsys.readouterr().out) if m["kind"] == "ConfigMap"]

    assert configmaps() == ["jmk-scheduler-trigger-one", "jmk-scheduler-trigger-two"]
    assert configmaps("--trigger", "two", "--name", "nightly") == ["nightly-trigger-two"]
    assert configmaps("--no-triggers") == []
    for flags, message in (
        (["--trigger", "three", "--trigger", "four"], "--trigger three, four: no such trigger here. Triggers: one, two."),
        (["--trigger", "one", "--no-triggers"], "--trigger and --no-triggers: give one"),
        (["--apply"], "--print-manifests and --apply: give one"),
    ):
        assert jmk(["scheduler", "--print-manifests", "--state-claim", "jmk-state", *flags]) == 2
        captured = capsys.readouterr()
        assert message in captured.err and captured.out == ""
    assert jmk(["scheduler", "--apply"]) == 2
    assert "--apply needs --state-claim NAME" in capsys.readouterr().err
    assert jmk(["scheduler", "--trigger", "one"]) == 2
    assert "--trigger only goes with --print-manifests or --apply" in capsys.readouterr().err


def test_the_sync_adds_keeps_replaces_and_removes_only_what_it_carried(
        state_dir: Path, retrain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mounted = tmp_path / "mounted"
    add_trigger(build_trigger(retrain, name="one", on_new_objects="s3://bucket/one/"))
    add_trigger(build_trigger(retrain, name="two", on_new_objects="s3://bucket/two/"))
    carried = carry(chosen([]), scheduler="jmk-scheduler", namespace="ns", mount=str(mounted))
    for files in carried:
        project(files, mounted)
    # The claim's state: another directory, holding a trigger added there by hand.
    monkeypatch.setenv("JMK_STATE_DIR", str(tmp_path / "claim"))
    add_trigger(build_trigger(retrain, name="by-hand", on_new_objects="s3://bucket/hand/"))
    assert sync_carried(mounted) == ["added one", "added two"]
    assert get_trigger("one").pipeline == str(mounted / "one" / "pipeline.yaml")
    cursor = load_cursor("one")
    cursor.seen = {"s3://bucket/one/a": "etag"}
    save_cursor("one", cursor)
    assert sync_carried(mounted) == []  # unchanged: the cursor stays
    assert load_cursor("one").seen == {"s3://bucket/one/a": "etag"}

    definition = mounted / "one" / "trigger.json"
    changed = json.loads(definition.read_text()) | {"cooldown": 3600.0}
    definition.write_text(json.dumps(changed))
    assert sync_carried(mounted) == ["replaced one"]
    assert get_trigger("one").cooldown == 3600.0 and load_cursor("one").seen == {}

    (mounted / "two" / "trigger.json").write_text("{not json")  # unreadable: left as it was
    assert sync_carried(mounted) == []
    assert get_trigger("two").url == "s3://bucket/two/"
    for path in sorted((mounted / "two").iterdir()):
        path.unlink()
    (mounted / "two").rmdir()
    assert sync_carried(mounted) == ["removed two"]
    assert sync_carried(tmp_path / "no-such-folder") == ["removed one"]
    assert [t.name for t in list_triggers()] == ["by-hand"]  # never carried: left alone


def test_a_carried_trigger_fires_its_mounted_pipeline(
        state_dir: Path, retrain: Path, tmp_path: Path, s3_server: Any, s3_bucket: str,
        evaluators: list[TriggerEvaluator]) -> None:
    mounted = tmp_path / "mounted"
    add_trigger(build_trigger(retrain, name="new-data", on_new_objects=f"s3://{s3_bucket}/in/", min_new=2))
    (files,) = carry(chosen(["new-data"]), scheduler="jmk-scheduler", namespace="ns", mount=str(mounted))
    project(files, mounted)
    for path in mounted.rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)  # read-only, as a ConfigMap volume is
    from jupyter_mlflow_k8s.pipelines.triggers import remove_trigger

    remove_trigger("new-data")  # only the carried one is left to fire
    made = evaluator(evaluators, carried_from=mounted)
    keys = put(s3_server, s3_bucket, "in/a.csv", "in/b.csv")
    assert made.tick() == ["new-data"]
    wait_run_ended(made, "new-data")
    (run,) = PipelineEngine().list()
    assert run.state == "succeeded" and run.steps["train"].outputs == {"objects": sorted(keys)}
    assert [e["event"] for e in read_history("new-data")] == ["fired", "run-ended"]
