"""A real Kubernetes 1.20 cluster for the tests: control plane and a real node, built on this machine.

- ``build.sh`` builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and
  the pause binary from Debian 12's packages into a cache outside the repository (exit 3: impossible here).
- ``images.py`` builds the runner and single-user images from docker/ with buildah, on bases made here.
- ``control.py`` (``Cluster``, ``ensure_built``, ``main``) starts and stops the control plane with a fresh
  PKI, token and kubeconfig per start, then the node.
- ``node.py`` is the real node (containerd, CNI, kubelet, kube-proxy, cluster DNS with ``dns.py``, a local
  registry); ``node_agent.py`` plays the node where a real one cannot run, with pods as local processes.
- ``cluster`` is the command line: ``tests/cluster/cluster prepare|up|down|status|build``.
"""
