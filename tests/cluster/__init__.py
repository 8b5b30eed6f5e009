"""A real Kubernetes 1.20 control plane for the tests, with a Python stand-in for the kubelet.

- ``build.sh`` builds etcd, kube-apiserver, kube-controller-manager and kube-scheduler from Debian 12's
  packages into a cache outside the repository (exit 3: impossible on this machine).
- ``control.py`` (``Cluster``, ``ensure_built``, ``main``) starts and stops them on 127.0.0.1 with a fresh
  PKI, token and kubeconfig per start, plus the node agent.
- ``node_agent.py`` plays the node: a Node with GPUs, pods run as local processes, container logs.
- ``cluster`` is the command line: ``tests/cluster/cluster up|down|status|build``.
"""
