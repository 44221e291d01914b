"""A real local Kubernetes control plane for tests, the demo and benchmarks."""

from topodra_cli.localcluster.cluster import LocalCluster, default_dir
from topodra_cli.localcluster.processes import ClusterError

__all__ = ["ClusterError", "LocalCluster", "default_dir"]
