"""`--replicas`, `--max-replicas`, `--cpus`, `--gpus`, `--resources`: parsed, checked, and honoured by Ray
(a custom resource pins every replica to the nodes that advertise it)."""

from __future__ import annotations

import time

import pytest

from dfrt.cluster.placement import (
    Placement,
    check_capacity,
    parse_resources,
    placement,
    placements,
    replicas_that_fit,
    scale,
)
from dfrt.errors import ConfigError

pytestmark = pytest.mark.runtime  # parsing needs neither torch nor Ray (the cluster test skips without it)


def test_replica_counts_per_role_and_autoscaling_bounds():
    fixed = scale("2")
    assert fixed.replicas == fixed.max_replicas == {"encoder": 2, "llm": 2}
    assert fixed.autoscaling("llm") is None
    grown = scale("encoder=1,llm=2", "llm=4")
    assert grown.replicas == {"encoder": 1, "llm": 2} and grown.max_replicas == {"encoder": 1, "llm": 4}
    assert grown.autoscaling("encoder") is None
    config = grown.autoscaling("llm")
    assert config is not None
    assert (config["min_replicas"], config["initial_replicas"], config["max_replicas"]) == (2, 2, 4)


@pytest.mark.parametrize(
    ("replicas", "maximum", "message"),
    [
        ("0", None, "from 1 to 1024"),
        ("two", None, "whole number"),
        ("encoder=1", None, "how many for llm"),
        ("decoder=1,llm=1", None, "N or encoder=N,llm=M"),
        ("3", "2", "is below --replicas"),
        ("1", "llm=-1", "whole number"),
        ("1", "5000", "from 1 to 1024"),
    ],
)
def test_bad_replica_counts_are_one_error(replicas, maximum, message):
    with pytest.raises(ConfigError, match=message):
        scale(replicas, maximum)


def test_reservations():
    assert placement().actor_options() == {"num_cpus": 1.0}
    share = placement(cpus=2, gpus=0.25, resources='{"jetson": 1, "site.a": 0.5}')
    assert share.actor_options() == {
        "num_cpus": 2.0,
        "num_gpus": 0.25,
        "resources": {"jetson": 1.0, "site.a": 0.5},
    }
    for kwargs, message in (
        ({"gpus": 1.5}, "whole number of GPUs"),
        ({"gpus": -1}, "--gpus"),
        ({"cpus": float("nan")}, "--cpus"),
        ({"resources": '{"GPU": 1}'}, "not a custom resource name"),
        ({"resources": '{"jetson": -1}'}, "--resources jetson"),
        ({"resources": '{"jetson": true}'}, "--resources jetson"),
        ({"resources": "[]"}, "JSON object"),
        ({"resources": "{"}, "--resources"),
        ({"resources": '{"' + "x" * 100 + '": 1}'}, "not a custom resource name"),
    ):
        with pytest.raises(ConfigError, match=message):
            placement(**kwargs)
    assert parse_resources(None) == {}


def test_reservations_per_role():
    same = placements("0.5", "0.25", '{"jetson": 1}')
    assert same["encoder"] == same["llm"] == Placement(0.5, 0.25, {"jetson": 1.0})
    split = placements(
        "encoder=1,llm=2", "encoder=0.5,llm=1", '{"encoder": {"jetson": 1}, "llm": {"gpu_server": 1}}'
    )
    assert split["encoder"] == Placement(1.0, 0.5, {"jetson": 1.0})
    assert split["llm"] == Placement(2.0, 1.0, {"gpu_server": 1.0})
    assert placements(resources='{"llm": {"gpu_server": 1}}')["encoder"].resources == {}
    for kwargs, message in (
        ({"cpus": "encoder=1"}, "how much for llm"),
        ({"cpus": "encoder=1,encoder=2"}, "X or encoder=X,llm=Y"),
        ({"gpus": "encoder=x,llm=1"}, "--gpus encoder must be a number"),
        ({"gpus": "llm=1.5,encoder=0"}, "whole number of GPUs"),
        ({"resources": '{"encoder": {"GPU": 1}}'}, "not a custom resource name"),
    ):
        with pytest.raises(ConfigError, match=message):
            placements(**kwargs)


def test_capacity_is_checked_against_the_nodes_before_ray_would_wait_for_ever():
    nodes = [
        {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0, "jetson": 1.0}},
        {"Alive": True, "Resources": {"CPU": 8.0}},
        {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}},  # a dead node holds nothing
    ]
    assert replicas_that_fit(nodes, Placement(1.0)) == 10
    assert replicas_that_fit(nodes, Placement(0.5, 0.5)) == 2
    assert replicas_that_fit(nodes, Placement(0.1, 0.0, {"jetson": 0.5})) == 2
    assert replicas_that_fit(nodes, Placement(0.0)) > 1000  # reserves nothing
    check_capacity(nodes, Placement(0.5, 0.5), 2, "replica")
    with pytest.raises(ConfigError, match="holds 2 replicas"):
        check_capacity(nodes, Placement(0.5, 0.5), 3, "replica")
    with pytest.raises(ConfigError, match="no node of the Ray cluster has what one actor reserves"):
        check_capacity(nodes, Placement(1.0, 2.0), 1, "actor")


def test_an_unschedulable_placement_is_one_error_not_a_hang(ray_cluster, bundle):
    from dfrt.cluster.placement import Cluster
    from dfrt.cluster.serve import start
    from dfrt.serve import ServeOptions

    cluster = Cluster(ray_cluster.address, placement(gpus=1), scale("1"))  # no node has a GPU
    with pytest.raises(ConfigError, match="no node of the Ray cluster"):
        start(ServeOptions(bundle=bundle, port=_free_port()), cluster)


def test_custom_resources_pin_each_deployment_and_gpu_fractions_share(ray_cluster, bundle):
    """Encoders that need ``{"jetson": 1}`` start on the node that advertises it, LLMs that need
    ``{"gpu_server": 1}`` on the other; two half-GPU replicas take each node's one (logical) GPU."""
    import ray
    from ray import serve
    from ray._private.state import actors

    from dfrt.cluster.placement import Cluster
    from dfrt.cluster.serve import APP_NAME, start
    from dfrt.serve import ServeOptions

    jetson = ray_cluster.cluster.add_node(num_cpus=2, num_gpus=1, resources={"jetson": 4})
    server = ray_cluster.cluster.add_node(num_cpus=2, num_gpus=1, resources={"gpu_server": 4})
    ray_cluster.cluster.wait_for_nodes()
    try:
        wanted = placements("0.5", "0.5", '{"encoder": {"jetson": 1}, "llm": {"gpu_server": 1}}')
        start(
            ServeOptions(bundle=bundle, port=_free_port()), Cluster(ray_cluster.address, wanted, scale("2"))
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            replicas = [a for a in actors().values() if a["State"] == "ALIVE" and _replica(a)]
            if len(replicas) == 4:
                break
            time.sleep(0.5)
        nodes = {kind: {a["Address"]["NodeID"] for a in replicas if a["ActorClassName"].endswith(kind)}
                 for kind in ("VisualEncoder", "LanguageModel")}  # fmt: skip
        assert nodes == {"VisualEncoder": {jetson.node_id}, "LanguageModel": {server.node_id}}
        assert ray.available_resources().get("GPU", 0.0) == 0.0  # 2 x 0.5 of each node's 1
    finally:
        serve.delete(APP_NAME)
        serve.shutdown()
        ray_cluster.cluster.remove_node(jetson)
        ray_cluster.cluster.remove_node(server)


def _replica(actor: dict) -> bool:
    return actor.get("ActorClassName", "").split(":")[-1] in ("VisualEncoder", "LanguageModel")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
