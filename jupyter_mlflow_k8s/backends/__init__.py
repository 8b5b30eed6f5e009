"""Backends run jobs: ``local`` (processes on this machine) and, later, ``kubernetes``.

Nothing is imported here, so that a job's supervisor process (``backends.local_supervisor``)
starts without traitlets or psutil. Use ``backends.base`` for the ABC and the registry.
"""
