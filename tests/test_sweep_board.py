"""The sweep leaderboard: rows best first, text and HTML renderings, and the live view in a terminal
and in a kernel with ipywidgets. Pure: no jobs, no MLflow, no kernel."""

from __future__ import annotations

import copy
import time
from typing import Any

import IPython
import pytest

from jupyter_mlflow_k8s.exceptions import JMKUsageError
from jupyter_mlflow_k8s.widgets import sweep as board
from jupyter_mlflow_k8s.widgets.sweep import (
    SweepTable,
    SweepView,
    describe_sweep,
    leaderboard_rows,
    render_html,
    render_text,
)


def trial(index: int, state: str, objective: float | None = None, **extra: Any) -> dict[str, Any]:
    lr, batch = [0.01, 0.001, 0.0001][index % 3], [32, 64][index // 3 % 2]
    record = {"index": index, "params": {"lr": lr, "batch": batch}, "repeat": 0, "state": state,
              "objective": objective, "job_id": f"job{index:05d}", "run_id": f"run{index}", "error": None,
              "started": None, "finished": None, "step": None, "value": None}
    if state not in ("queued",):
        record["started"] = 1765000000.0 + index
    if state in ("succeeded", "failed", "pruned", "cancelled"):
        record["finished"] = record["started"] + 3.5
    record.update(extra)
    return record


def make_sweep(trials: list[dict[str, Any]], direction: str = "min", best: int | None = None, state: str = "running") -> dict[str, Any]:
    return {"sweep_id": "s-1a2b3c4d", "state": state, "objective": {"metric": "val_loss", "direction": direction},
            "search": "grid", "total": 6, "parallel": 3, "max_failures": 1, "prune": None, "names": ["lr", "batch"],
            "best": best, "message": "", "parent_run_id": "parent", "trials": trials}


def mixed(direction: str = "min") -> dict[str, Any]:
    """Six trials in every state, the objectives out of order."""
    trials = [
        trial(0, "failed", error="ValueError: boom\nTraceback ..."),
        trial(1, "queued"),
        trial(2, "succeeded", 0.5),
        trial(3, "running", step=4, value=0.31),
        trial(4, "succeeded", 0.25),
        trial(5, "succeeded", 0.75),
    ]
    return make_sweep(trials, direction, best=4 if direction == "min" else 5)


def test_rows_sort_best_first_for_min_and_for_max_then_running_queued_and_the_rest() -> None:
    assert [r["trial"] for r in leaderboard_rows(mixed("min"))] == [4, 2, 5, 3, 1, 0]
    assert [r["trial"] for r in leaderboard_rows(mixed("max"))] == [5, 2, 4, 3, 1, 0]
    # A NaN objective never wins, in either direction; ties keep the trials' order.
    for direction in ("min", "max"):
        sweep = make_sweep([trial(0, "succeeded", float("nan")), trial(1, "succeeded", 1.0), trial(2, "succeeded", 1.0)], direction)
        assert [r["trial"] for r in leaderboard_rows(sweep)] == [1, 2, 0]


def test_a_row_has_compact_params_state_duration_job_and_best() -> None:
    sweep = mixed()
    sweep["trials"][4]["params"]["lr"] = 0.000123456789
    best, second = leaderboard_rows(sweep)[:2]
    assert best == {"trial": 4, "params": {"lr": "0.0001235", "batch": "64"}, "repeat": 0, "state": "succeeded",
                    "objective": "0.25", "value": 0.25, "duration": "3.5s", "job": "job00004", "run": "run4",
                    "error": "", "best": True}
    assert second["best"] is False and second["params"] == {"lr": "0.0001", "batch": "32"}


def test_a_running_trial_shows_its_last_intermediate_value_as_such() -> None:
    sweep = mixed()
    running = next(r for r in leaderboard_rows(sweep) if r["state"] == "running")
    assert running["objective"] == "0.31 @ step 4" and running["value"] is None
    assert "0.31 @ step 4" in render_text(sweep) and "0.31 @ step 4" in render_html(sweep)
    queued = next(r for r in leaderboard_rows(sweep) if r["state"] == "queued")
    assert queued["objective"] == "" and queued["duration"] == ""


def test_the_summary_counts_trials_and_names_the_best() -> None:
    assert describe_sweep(mixed()) == (
        "sweep s-1a2b3c4d · grid · 4/6 done · 1 running · 1 failed · best val_loss=0.25 (trial 4) · min"
    )
    ended = make_sweep([trial(0, "failed"), trial(1, "failed")], state="failed")
    ended["message"] = "2 trials failed: more than --max-failures 1"
    assert describe_sweep(ended).endswith("2 failed · no result yet · min · failed: 2 trials failed: more than --max-failures 1")


def test_the_best_row_is_marked_in_text_and_highlighted_in_html() -> None:
    sweep = mixed()
    lines = render_text(sweep).splitlines()
    assert lines[0] == describe_sweep(sweep)
    assert lines[1].split() == ["trial", "lr", "batch", "state", "val_loss", "time", "job"]
    marked = [line for line in lines[2:] if line.startswith("*")]
    assert len(marked) == 1 and marked[0].split()[:2] == ["*", "4"]
    assert lines[3].split()[:2] == ["2", "0.0001"]  # not marked
    assert "ValueError: boom" in lines[-1] and "Traceback" not in render_text(sweep)

    page = render_html(sweep)
    rows = page.split("<tbody>")[1].split("</tr>")
    assert "jmk-SweepBest" in rows[0] and "<td>4</td>" in rows[0]
    assert all("jmk-SweepBest" not in row for row in rows[1:])
    assert board.STATE_COLORS["failed"] in page and board.STATE_COLORS["running"] in page


def test_pruned_trials_have_their_own_color_and_repeats_a_column() -> None:
    sweep = make_sweep([trial(0, "pruned", step=2, value=0.9), trial(1, "succeeded", 0.1, repeat=1)], best=1)
    page = render_html(sweep)
    assert board.STATE_COLORS["pruned"] not in {board.STATE_COLORS[s] for s in ("queued", "running", "succeeded", "failed", "cancelled")}
    assert board.STATE_COLORS["pruned"] in page and "<th>repeat</th>" in page
    assert render_text(sweep).splitlines()[1].split() == ["trial", "lr", "batch", "repeat", "state", "val_loss", "time", "job"]
    assert "0.9 @ step 2" in render_text(sweep)
    assert "repeat" not in render_text(mixed())


def test_everything_user_given_is_escaped_in_html() -> None:
    sweep = mixed()
    sweep["sweep_id"] = "s-<b>x</b>"
    sweep["names"] = ["lr", "<i>batch</i>"]
    for t in sweep["trials"]:
        t["params"] = {"lr": "<script>alert(1)</script>", "<i>batch</i>": 1}
    sweep["trials"][0]["error"] = "bad 'quote' <img src=x onerror=alert(1)>"
    page = render_html(sweep)
    assert "<script>" not in page and "<img" not in page and "<i>" not in page and "<b>x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;i&gt;batch&lt;/i&gt;" in page
    assert "title='bad &#x27;quote&#x27;" in page
    assert "<script>alert(1)</script>" in render_text(sweep)  # text is text


def test_limit_shows_the_top_rows_and_how_many_more() -> None:
    sweep = mixed()
    lines = render_text(sweep, limit=2).splitlines()
    assert [line.split()[0] for line in lines[2:4]] == ["*", "2"]
    assert lines[4:] == ["... 4 more"] and len(lines) == 5
    assert "... 4 more" not in render_text(sweep, limit=6) and render_text(sweep, limit=6) == render_text(sweep)
    page = render_html(sweep, limit=3)
    assert page.count("<tr") == 4 and "... 3 more" in page  # the header row and three trials
    assert render_text(sweep, limit=0).splitlines()[1:] == ["... 6 more"]
    with pytest.raises(JMKUsageError, match="0 or more"):
        render_text(sweep, limit=-1)


def test_sweep_table_is_text_in_terminals_and_html_in_notebooks() -> None:
    sweep = mixed()
    sweep["state"] = "succeeded"
    table = SweepTable(sweep, limit=3)
    assert repr(table) == render_text(sweep, limit=3)
    assert table._repr_html_() == render_html(sweep, limit=3)
    empty = make_sweep([])
    assert repr(SweepTable(empty)).splitlines()[1:] == ["No trials yet."]
    assert "No trials yet." in SweepTable(empty)._repr_html_()


def test_in_a_terminal_the_view_prints_a_line_per_state_change_and_the_table_once(capsys: pytest.CaptureFixture[str]) -> None:
    sweep = make_sweep([trial(i, "queued") for i in range(4)])
    view = SweepView(sweep, on_cancel=lambda: None)
    view.show()
    view.update(sweep)
    assert capsys.readouterr().out == "[jmk] sweep s-1a2b3c4d · grid · 6 trials, 3 at a time · objective val_loss:min\n"

    sweep["trials"][0].update(state="running", started=1.0)
    view.update(sweep)
    sweep["trials"][0].update(step=1, value=0.5)  # a new intermediate value: no line
    view.update(sweep)
    view.update()
    assert capsys.readouterr().out == "[jmk] sweep s-1a2b3c4d trial 0 (lr=0.01, batch=32) running as job job00000\n"

    sweep["trials"][0].update(state="succeeded", objective=0.21, finished=4.0)
    sweep["trials"][1].update(state="failed", error="RuntimeError: no val_loss logged\nmore")
    sweep["best"] = 0
    view.update(sweep)
    view.update(sweep)
    assert capsys.readouterr().out.splitlines() == [
        "[jmk] sweep s-1a2b3c4d trial 0 (lr=0.01, batch=32) succeeded: val_loss=0.21 (best so far)",
        "[jmk] sweep s-1a2b3c4d trial 1 (lr=0.001, batch=32) failed: RuntimeError: no val_loss logged",
    ]

    # The end: a running trial cancelled says so, a queued one does not; the table comes once.
    sweep["trials"][2].update(state="running", started=2.0)
    view.update(sweep)
    capsys.readouterr()
    sweep["trials"][2].update(state="cancelled", finished=3.0)
    sweep["trials"][3].update(state="cancelled")
    sweep.update(state="cancelled", message="cancelled by the user")
    view.update(sweep)
    view.update(sweep)
    view.update(copy.deepcopy(sweep))
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "[jmk] sweep s-1a2b3c4d trial 2 (lr=0.0001, batch=32) cancelled"
    assert out.count("trial 3") == 0
    assert out.count(describe_sweep(sweep)) == 1 and out.endswith(render_text(sweep) + "\n")
    view.close()


def test_a_view_of_a_sweep_that_already_ended_prints_only_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    sweep = mixed()
    sweep["state"] = "succeeded"
    view = SweepView(sweep)
    view.show()
    view.update(sweep)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[jmk] sweep s-1a2b3c4d · grid")
    assert "\n".join(lines[1:]) == render_text(sweep)


def test_following_in_background_prints_until_the_sweep_ends(capsys: pytest.CaptureFixture[str]) -> None:
    states = [make_sweep([trial(0, "queued")]), make_sweep([trial(0, "running")]),
              make_sweep([trial(0, "succeeded", 0.5)], best=0, state="succeeded")]
    calls = iter(states)
    view = SweepView(states[0])
    view.follow_in_background(lambda: next(calls), interval=0).join(timeout=30)
    out = capsys.readouterr().out
    assert "trial 0 (lr=0.01, batch=32) running" in out
    assert "succeeded: val_loss=0.5 (best so far)" in out and out.count(describe_sweep(states[-1])) == 1


class _Kernel:
    kernel = object()  # what JobStatusView and SweepView look for to use widgets


def test_in_a_kernel_the_widget_redraws_on_state_changes_and_the_end_else_at_most_every_min_redraw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("ipywidgets")
    monkeypatch.setattr(IPython, "get_ipython", lambda: _Kernel())
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    cancelled: list[bool] = []
    sweep = make_sweep([trial(0, "running", step=1, value=0.5), trial(1, "queued")])
    view = SweepView(sweep, on_cancel=lambda: cancelled.append(True))
    assert view._widget is not None
    view.update(sweep)
    assert "0.5 @ step 1" in view._board.value

    sweep["trials"][0].update(step=2, value=0.4)
    view.update(sweep)
    assert "0.4 @ step 2" not in view._board.value  # no state change, drawn a moment ago
    clock[0] += board.MIN_REDRAW_SECONDS
    view.update(sweep)
    assert "0.4 @ step 2" in view._board.value

    sweep["trials"][0].update(state="succeeded", objective=0.3)
    sweep["best"] = 0
    view.update(sweep)
    assert "jmk-SweepBest" in view._board.value and "0.3" in view._board.value

    view._action.click()
    assert cancelled == [True] and view._action.disabled
    sweep["trials"][1].update(state="running")
    view.update(sweep)
    sweep["trials"][1]["state"] = "cancelled"
    sweep.update(state="cancelled")
    view.update(sweep)
    assert "cancelled" in view._board.value.split("</div>")[0] and view._action.layout.display == "none"
    view.close()
