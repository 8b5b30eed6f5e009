"""Distributed training: the launcher each node of a ``%%train --nodes N`` / ``--procs P`` job runs.

:mod:`.launch` is the front door of a node's process (a pod, or the local supervisor's child): it
waits for its peers' names, then runs the job's runner as ``P`` workers under torchrun's elastic
agent with the c10d rendezvous, stops every node when one rank fails, and exits with that rank's
status. The conventions both sides share (rank prefixes, the failed-rank line) are in
:mod:`jupyter_mlflow_k8s.ranks`.
"""
