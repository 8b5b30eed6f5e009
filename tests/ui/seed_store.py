"""Seed a real MLflow store for the sidebar's UI tests: ``python tests/ui/seed_store.py TRACKING_URI``.

Runs in its own process so that ``mlflow.set_tracking_uri`` (which the registry helpers call) never
leaks into the pytest process. Prints one JSON line describing what it made.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

XSS = "<img src=x onerror=alert(1)>"
LRS = ("0.1", "0.01", "0.001")
STEPS = 25


def seed_runs(uri: str, experiment: str = "sidebar-demo", count: int = 24) -> dict[str, object]:
    """``count`` finished runs with params lr/batch, loss and accuracy histories, and the XSS-named run."""
    from mlflow.entities import Metric, Param, RunStatus, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.create_experiment(experiment)
    now = int(time.time() * 1000) - count * 60_000
    finals: dict[str, float] = {}
    lrs: dict[str, str] = {}
    for index in range(count + 1):
        name = XSS if index == count else f"mnist-{index:02d}"
        lr = LRS[index % len(LRS)]
        start = now + index * 60_000
        run = client.create_run(experiment_id, start_time=start, run_name=name)
        final = 0.99 if index == count else round(0.05 + 0.9 * ((index * 7) % count) / count, 4)
        metrics = []
        for step in range(STEPS):
            decay = (STEPS - 1 - step) / (STEPS - 1)
            loss = final + 1.5 * decay * decay
            metrics.append(Metric("loss", round(loss, 4), start + step * 1000, step))
            metrics.append(Metric("accuracy", round(1 - loss / 3, 4), start + step * 1000, step))
        client.log_batch(run.info.run_id, metrics=metrics,
                         params=[Param("lr", lr), Param("batch", str(32 * (1 + index % 2)))],
                         tags=[RunTag("jmk.demo", "1")])
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED), end_time=start + STEPS * 1000)
        finals[name] = final
        lrs[name] = lr
    return {"experiment_id": experiment_id, "final_loss": finals, "lr": lrs}


def main(uri: str) -> None:
    started = time.perf_counter()
    runs = seed_runs(uri)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: serving_fixtures
    from serving_fixtures import make_served

    served = make_served("iris-demo", uri)
    print(json.dumps({**runs, "model": served.name, "versions": list(served.versions),
                      "rows": served.frame.iloc[:4].to_dict(orient="records"),
                      "seconds": round(time.perf_counter() - started, 2)}))


if __name__ == "__main__":
    main(sys.argv[1])
