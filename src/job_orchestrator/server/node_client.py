"""One client of a service as the engine speaks to it about a job, and which client that is.

A job is only ever spoken about with the client it was dispatched to (`recorded_node`): one
whose client is no longer configured raises ClientLeftError instead of reaching another
client, and every request about a payload carries the job's dispatch key, which our client
checks (an answer about another job's payload is a PayloadLostError).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

from job_orchestrator.config import NodeConfig, ServerSettings
from job_orchestrator.errors import ClientLeftError
from job_orchestrator.server.node_calls import NodeCalls, RetrieveResult, ZipAnswer
from job_orchestrator.server.node_wire import base_url
from job_orchestrator.server.storage import JobRecord
from job_orchestrator.status import Status
from job_orchestrator.wire import CONTAINER_IMAGE_FIELD


def client_label(node_url: str) -> str:
    """A client as job messages name it (the one place: users may later see names, not URLs)."""
    return f"client {base_url(node_url)}"


def client_left_message(node_url: str) -> str:
    return (
        f"its {client_label(node_url)} is no longer configured for this service; "
        "the server asks no other client about it"
    )


def recorded_node(settings: ServerSettings, job: JobRecord) -> NodeConfig | None:
    """The node a job was dispatched to (or is to be); None if its service is not configured.

    Only a job with no recorded node (taken over from an original's database) uses the
    service's first node. A recorded node that is no longer configured raises
    ClientLeftError: another client's payload of the same id belongs to another job.
    """
    service = settings.services.get(job.service)
    if service is None or not service.nodes:
        return None
    if job.node is None:
        return service.nodes[0]
    node = next((node for node in service.nodes if node.upload_url == job.node), None)
    if node is None:
        raise ClientLeftError(client_left_message(job.node))
    return node


@dataclass(frozen=True, slots=True)
class NodeClient:
    """One client of one service as the engine speaks to it: bound to its node and token."""

    node: NodeConfig
    token: str | None
    gateway: NodeCalls

    @property
    def url(self) -> str:
        """The node's identity in the jobs table (its upload URL)."""
        return self.node.upload_url

    async def submit(
        self,
        files: Path,
        *,
        dispatch_key: str,
        timeout_s: float | None,
        container_image: str | None = None,
    ) -> int:
        return await self.gateway.submit(
            self.node,
            files,
            dispatch_key=dispatch_key,
            token=self.token,
            timeout_s=timeout_s,
            fields={CONTAINER_IMAGE_FIELD: container_image} if container_image else None,
        )

    async def retrieve(
        self,
        payload_id: int,
        destination: Path,
        *,
        key: str | None,
        wait_s: float,
        known: Status,
        settle_s: float = 0.0,
    ) -> RetrieveResult:
        return await self.gateway.retrieve(
            self.node,
            payload_id,
            destination,
            key=key,
            wait_s=wait_s,
            known=known,
            token=self.token,
            settle_s=settle_s,
        )

    async def fetch_partial(self, payload_id: int, destination: Path, *, key: str | None) -> None:
        await self.gateway.fetch_partial(
            self.node, payload_id, destination, key=key, token=self.token
        )

    def open_partial(
        self, payload_id: int, *, key: str | None
    ) -> AbstractAsyncContextManager[ZipAnswer]:
        return self.gateway.open_partial(self.node, payload_id, key=key, token=self.token)

    async def kill(self, payload_id: int, *, key: str | None) -> None:
        await self.gateway.kill(self.node, payload_id, key=key, token=self.token)
