"""A local multi-node Ray cluster on loopback (a head with no CPUs and two worker nodes), for this package.

No dashboard, no usage reporting; everything stops with the session. Skips without ``dfrt[ray]``
(the test modules that need Ray skip themselves; ``test_placement.py``'s parsing tests need none).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

WORKER_CPUS = 2  # logical CPUs per worker node (the machine may have fewer: replicas reserve 0.5)


@dataclass
class LocalCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    workers: list[Any]  # the worker nodes (removable)

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_worker(self) -> Any:
        node = self.cluster.add_node(num_cpus=WORKER_CPUS)
        self.workers.append(node)
        self.cluster.wait_for_nodes()
        return node

    def remove_worker(self, node: Any) -> None:
        self.workers.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LocalCluster]:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.serve")
    pytest.importorskip("ray.data")
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    local = LocalCluster(cluster, [])
    try:
        for _ in range(2):
            local.add_worker()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        yield local
    finally:
        ray.shutdown()
        cluster.shutdown()
