"""The original Rust job-orchestrator 2.2.3 (built by scripts/build-original) beside ours.

`Fleet` starts any mix of original and our servers and clients for one service on free
loopback ports. Every process carries the harness's tag in its environment (the original's
`run.sh` processes inherit it too), so teardown finds and kills whatever is left.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from testkit.harness import Cluster, Node, free_port
from testkit.prerequisites import unavailable

SERVICE = "example"
ORIGINAL_VERSION = "2.2.3"
#: Where scripts/build-original installs it (never on PATH, so it cannot shadow ours).
ORIGINAL_ROOT = Path(
    os.environ.get(
        "JOB_ORCHESTRATOR_ORIGINAL_ROOT",
        str(Path.home() / ".cache" / "job-orchestrator-original"),
    )
)
ORIGINAL_BINARY = ORIGINAL_ROOT / "bin" / "job-orchestrator"
#: run.sh for the original client: it needs the trap (UPSTREAM §7), ours accepts it.
TRAP = "trap 'echo $? > .orchestrator.exit' EXIT\n"


def require_original() -> Path:
    """The original's binary; skip without it, except in CI, where it must have been built."""
    if ORIGINAL_BINARY.is_file() and os.access(ORIGINAL_BINARY, os.X_OK):
        return ORIGINAL_BINARY
    unavailable(
        f"the original job-orchestrator {ORIGINAL_VERSION} is not built at {ORIGINAL_BINARY} "
        f"(run ./scripts/build-original; it needs cargo and the crates registry)"
    )


@dataclass
class OriginalNode(Node):
    """The original binary as a `Node`: same start, health wait, stop and log."""

    def command(self) -> list[str]:
        return [str(ORIGINAL_BINARY), self.kind]

    def working_dir(self) -> Path | None:
        # The original writes its defaults (db.sqlite, data/) into its working directory.
        return self.log_path.parent


class Fleet(Cluster):
    """One service `example` served by any mix of original and our processes."""

    def original_client(self, env: Mapping[str, str] | None = None) -> OriginalNode:
        index = len(self.clients)
        port = free_port()
        node = OriginalNode(
            "client",
            port,
            self.base_env(
                {
                    "PORT": str(port),
                    "DB_PATH": str(self.root / f"client{index}.db"),
                    "DATA_PATH": str(self.root / f"client{index}"),
                    **(env or {}),
                }
            ),
            self.root / f"client{index}.log",
        )
        self.clients.append(node)
        return node.start()

    def our_client(self, env: Mapping[str, str] | None = None) -> Node:
        return self.add_client(env)

    def service_urls(self, services: Mapping[str, Node] | None = None) -> dict[str, str]:
        """The original's per-service settings: one client per service, the only form it
        knows (by default SERVICE on the fleet's one client)."""
        if services is None:
            (client,) = self.clients
            services = {SERVICE: client}
        urls = {}
        for service, client in services.items():
            key = f"SERVICE_{service.upper()}"
            urls[f"{key}_UPLOAD_URL"] = f"{client.url}/submit"
            urls[f"{key}_DOWNLOAD_URL"] = f"{client.url}/retrieve"
            urls[f"{key}_TERMINATE_URL"] = f"{client.url}/kill"
        return urls

    def original_server(
        self, env: Mapping[str, str] | None = None, *, services: Mapping[str, Node] | None = None
    ) -> OriginalNode:
        port = free_port()
        self.server = OriginalNode(
            "server",
            port,
            self.base_env(
                {
                    "PORT": str(port),
                    "DB_PATH": str(self.root / "server.db"),
                    "DATA_PATH": str(self.root / "server-data"),
                    **self.service_urls(services),
                    **(env or {}),
                }
            ),
            self.root / "server.log",
        )
        return self.server.start()

    def our_server(self, env: Mapping[str, str] | None = None) -> Node:
        """Ours, configured with the original's variables when there is one client."""
        if len(self.clients) == 1:
            return self.start_server({**self.service_urls(), **(env or {})}, start=True)
        return self.start_server(env)

    def restart(self, node: Node) -> None:
        node.stop()
        node.start()


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=30, trust_env=False)
