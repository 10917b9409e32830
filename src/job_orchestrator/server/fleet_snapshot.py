"""The clients as the node loop last saw them, frozen: what /metrics, /status, `GET /services`
and the queue view read.

`Fleet.snapshot()` (nodes.py) takes one per request or scrape. The fleet's own states change
under the node loop while a page is rendered; a snapshot does not, so a page shows one moment
of each client, and readers never hold (or could change) the engine's state.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class NodeView:
    """One client (node) at the moment of the snapshot."""

    #: Its upload URL: its identity in the jobs table and in the fleet.
    url: str
    #: One of CLIENT_CONDITIONS: up, down, or why it answers but takes no new payload.
    condition: str
    healthy: bool
    down_since: float | None
    load_percent: float | None
    max_concurrent: int | None
    #: Why the latest failed check or call failed (kept after it recovers).
    last_error: str | None
    last_error_at: float | None
    #: The warnings the client printed at start (no token beyond loopback, no sandbox).
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """Every configured client's view, by upload URL, and each service's clients in order."""

    nodes: Mapping[str, NodeView]
    #: Service name -> the upload URLs of its clients, in the configured order.
    services: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Read-only copies: a snapshot handed to several readers stays what it was.
        object.__setattr__(self, "nodes", MappingProxyType(dict(self.nodes)))
        object.__setattr__(self, "services", MappingProxyType(dict(self.services)))

    def __getitem__(self, url: str) -> NodeView:
        return self.nodes[url]

    def is_down(self, url: str) -> bool:
        """Whether the client failed its checks (an unknown URL is not down)."""
        view = self.nodes.get(url)
        return view is not None and not view.healthy

    def of_service(self, service: str) -> Iterator[NodeView]:
        """The service's clients, in the configured order."""
        for url in self.services.get(service, ()):
            yield self.nodes[url]
