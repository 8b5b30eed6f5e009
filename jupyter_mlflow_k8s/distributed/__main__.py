"""``python -m jupyter_mlflow_k8s.distributed PAYLOAD_URL --nodes N --procs P ...``: see :mod:`.launch`."""

import sys

from .launch import main

if __name__ == "__main__":
    sys.exit(main())
