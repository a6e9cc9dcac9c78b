"""Deployment onto an existing cluster: Kubernetes manifests generated from a topology.

``placement`` reads a topology from the Hydra configs into one :class:`Placement` per device;
``k8s`` and ``k8s_monitoring`` turn placements into Kubernetes objects; ``cli`` is
``fedsim k8s-manifests``. Nothing here talks to a cluster: the output is files to apply.
"""
