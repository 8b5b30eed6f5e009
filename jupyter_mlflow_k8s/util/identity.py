"""Who the user is: one answer for MLflow's user tag, Kubernetes labels and names."""

from __future__ import annotations

import getpass
import os


def current_user() -> str:
    """The user's name: the JupyterHub user when a hub started us, else the login name.

    Under JupyterHub every single-user server runs as the same login (``jovyan``), so the hub's
    name comes first, or every user's runs and jobs would carry the same owner.
    """
    hub_user = os.environ.get("JUPYTERHUB_USER")
    if hub_user:
        return hub_user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (a container with a random uid)
        return "unknown"
