"""``python -m jupyter_mlflow_k8s.sweeps FOLDER``: the controller process of one sweep (started by the service)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Drive the sweep in the folder given; exit 0 once it has ended, whatever its trials did."""
    from .controller import run_sweep

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m jupyter_mlflow_k8s.sweeps <state_dir>/sweeps/<sweep id>", file=sys.stderr)
        return 2
    record = run_sweep(args[0])
    print(f"sweep {record['sweep_id']}: {record['state']} {record.get('message', '')}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
