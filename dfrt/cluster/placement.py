"""What one Ray worker of dfrt asks of a node, and how many of them run: checked before Ray starts.

``--cpus``/``--gpus``/``--resources`` are what each replica (or batch actor) reserves: a GPU fraction lets
several share one GPU, a custom resource pins the work to the nodes that advertise it (``ray start
--resources '{"jetson": 1}'``). ``--replicas N`` starts N; ``--max-replicas M`` lets Ray Serve's autoscaler
(or Ray Data's actor pool) grow to M under load. stdlib only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dfrt.errors import ConfigError
from dfrt.jsonio import parse_json
from dfrt.runtime import options as check

MAX_REPLICAS = 1024
RESOURCE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,63}", re.ASCII)
ROLES = ("encoder", "llm")
# (the two shapes of a per-role value, what a missing role lacks): for errors
COUNT_FORM = ("N or encoder=N,llm=M", "how many")
REAL_FORM = ("X or encoder=X,llm=Y", "how much")
T = TypeVar("T")


@dataclass(frozen=True)
class Placement:
    """One replica's reservation (Ray's ``num_cpus``, ``num_gpus``, ``resources``)."""

    cpus: float = 1.0
    gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)

    def actor_options(self) -> dict[str, Any]:
        """Ray's ``ray_actor_options`` / remote args."""
        out: dict[str, Any] = {"num_cpus": self.cpus}
        if self.gpus:
            out["num_gpus"] = self.gpus
        if self.resources:
            out["resources"] = dict(self.resources)
        return out


@dataclass(frozen=True)
class Scale:
    """Replica bounds per role (``encoder``, ``llm``; a batch uses ``encoder``'s for its actor pool)."""

    replicas: dict[str, int]
    max_replicas: dict[str, int]

    def autoscaling(self, role: str) -> dict[str, Any] | None:
        """Ray Serve's ``autoscaling_config``, or None for a fixed count."""
        low, high = self.replicas[role], self.max_replicas[role]
        if high == low:
            return None
        return {"min_replicas": low, "initial_replicas": low, "max_replicas": high,
                "target_ongoing_requests": 1}  # fmt: skip


@dataclass(frozen=True)
class Cluster:
    """Where and how wide ``--ray`` runs: the address (``auto``: a local Ray), what one replica of each
    role reserves (a :class:`Placement` for both, or a mapping role -> Placement) and the replica bounds."""

    address: str = "auto"
    placement: Placement | dict[str, Placement] = field(default_factory=Placement)
    scale: Scale = field(default_factory=lambda: scale())
    verbose: bool = False

    def __post_init__(self) -> None:
        given = self.placement
        if isinstance(given, Placement):
            given = dict.fromkeys(ROLES, given)
        if set(given) != set(ROLES):
            raise ConfigError(f"a placement for each of {', '.join(ROLES)} is needed, got {sorted(given)}")
        object.__setattr__(self, "placement", dict(given))

    def reserves(self, role: str) -> Placement:
        """What one replica of ``role`` (``encoder``: also a batch actor) reserves."""
        return self.placement[role]  # type: ignore[index]


def placement(cpus: float = 1.0, gpus: float = 0.0, resources: str | None = None) -> Placement:
    """``--cpus``, ``--gpus`` and ``--resources JSON`` checked (one :class:`ConfigError` naming the flag)."""
    cpus = check.real("--cpus", cpus, 0.0, 1024.0)
    gpus = check.real("--gpus", gpus, 0.0, 64.0)
    if gpus > 1 and gpus != int(gpus):
        raise ConfigError(f"--gpus above 1 must be a whole number of GPUs, got {gpus:g}")
    return Placement(cpus, gpus, parse_resources(resources))


def placements(cpus: str = "1", gpus: str = "0", resources: str | None = None) -> dict[str, Placement]:
    """``--cpus``, ``--gpus`` (``X`` or ``encoder=X,llm=Y``) and ``--resources`` (``{"jetson": 1}`` for both
    roles, or ``{"encoder": {...}, "llm": {...}}``) as one :class:`Placement` per role."""
    cpu = _per_role("--cpus", str(cpus), _real, REAL_FORM)
    gpu = _per_role("--gpus", str(gpus), _real, REAL_FORM)
    wanted = _resources_per_role(resources)
    return {role: placement(cpu[role], gpu[role], wanted[role]) for role in ROLES}


def _real(flag: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag} must be a number, got {text[:20]!r}") from None


def _resources_per_role(text: str | None) -> dict[str, str | None]:
    """The ``--resources`` JSON of each role (re-serialised; None: none)."""
    if text is None:
        return dict.fromkeys(ROLES)
    value = parse_json(text, "--resources")
    if (
        isinstance(value, dict)
        and value
        and set(value) <= set(ROLES)
        and all(isinstance(v, dict) for v in value.values())
    ):
        return {role: json.dumps(value[role]) if role in value else None for role in ROLES}
    return dict.fromkeys(ROLES, text)


def parse_resources(text: str | None) -> dict[str, float]:
    """``--resources '{"jetson": 1}'``: custom resource names to non-negative amounts."""
    if text is None:
        return {}
    value = parse_json(text, "--resources")
    if not isinstance(value, dict):
        raise ConfigError("--resources must be a JSON object, e.g. '{\"jetson\": 1}'")
    out = {}
    for name, amount in value.items():
        if not RESOURCE_NAME.fullmatch(name) or name in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ConfigError(f"--resources: {name[:40]!r} is not a custom resource name")
        out[name] = check.real(f"--resources {name}", amount, 0.0, 1e6)
    return out


def scale(replicas: str = "1", max_replicas: str | None = None) -> Scale:
    """``--replicas`` and ``--max-replicas``: ``N`` for every role or ``encoder=N,llm=M``; the maximum
    defaults to the replica count (no autoscaling) and may not be below it."""
    low = _per_role("--replicas", replicas, _count, COUNT_FORM)
    high = (
        dict(low)
        if max_replicas is None
        else _per_role("--max-replicas", max_replicas, _count, COUNT_FORM, low)
    )
    for role in ROLES:
        if high[role] < low[role]:
            raise ConfigError(f"--max-replicas {role}={high[role]} is below --replicas {role}={low[role]}")
    return Scale(low, high)


def _per_role(
    flag: str,
    text: str,
    parse: Callable[[str, str], T],
    form: tuple[str, str],
    default: dict[str, T] | None = None,
) -> dict[str, T]:
    """``flag``'s value for each role: ``V`` for every role, or ``encoder=V,llm=W`` (``form``: its shapes
    and what a missing role lacks, for errors); a role not named takes ``default``'s value, else is
    refused, and a role named twice is refused."""
    shapes, amount = form
    text = str(text).strip()
    if "=" not in text:
        return dict.fromkeys(ROLES, parse(flag, text))
    given: dict[str, T] = {}
    for part in text.split(","):
        role, sep, value = (x.strip() for x in part.partition("="))
        if not sep or role not in ROLES or role in given:
            raise ConfigError(f"{flag} must be {shapes}, got {text[:60]!r}")
        given[role] = parse(f"{flag} {role}", value)
    out = {**(default or {}), **given}
    missing = [role for role in ROLES if role not in out]
    if missing:
        raise ConfigError(f"{flag} {text[:60]!r} does not say {amount} for {', '.join(missing)}")
    return out


def _count(flag: str, text: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"{flag} must be a whole number, got {text[:20]!r}")
    return check.integer(flag, int(text), 1, MAX_REPLICAS)


def replicas_that_fit(nodes: list[dict[str, Any]], placement: Placement) -> int:
    """How many replicas of ``placement`` the alive nodes hold, by their total resources (``ray.nodes()``)."""
    need = {"CPU": placement.cpus, "GPU": placement.gpus, **placement.resources}
    need = {name: amount for name, amount in need.items() if amount > 0}
    alive = [node for node in nodes if node.get("Alive")]
    if not need:
        return MAX_REPLICAS * max(1, len(alive))
    return sum(
        min(int((node.get("Resources", {}).get(name, 0.0) + 1e-9) // amount) for name, amount in need.items())
        for node in alive
    )


def check_capacity(nodes: list[dict[str, Any]], placement: Placement, wanted: int, what: str) -> None:
    """:class:`ConfigError` when the cluster cannot hold ``wanted`` replicas (Ray would wait forever)."""
    fit = replicas_that_fit(nodes, placement)
    if fit >= wanted:
        return
    need = ", ".join(f"{k} {v:g}" for k, v in placement.actor_options().items() if k != "resources")
    need += "".join(f", {k} {v:g}" for k, v in placement.resources.items())
    if fit == 0:
        raise ConfigError(f"no node of the Ray cluster has what one {what} reserves ({need}): see --cpus, "
                          "--gpus, --resources")  # fmt: skip
    raise ConfigError(
        f"the Ray cluster holds {fit} {what}s of ({need}), {wanted} were asked for: lower --replicas or "
        "add nodes"
    )
