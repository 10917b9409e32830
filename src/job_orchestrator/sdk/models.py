"""The SDK's view of a job: a frozen snapshot of what the server last said about it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from job_orchestrator.status import TERMINAL, Status

__all__ = ["Job", "QueueInfo", "Status"]


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """Why a Queued job waits: `reason` is `user_quota`, `service_limit`, `no_healthy_client`,
    `waiting_turn`, `retry_backoff`, `client_unauthorized` or `client_disk_full`; `position`
    is 1-based among the service's queued jobs."""

    position: int | None
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the server described it.

    `id`, `status` and `message` are always known. The other fields come from `GET /jobs/{id}`
    and are None when the server does not offer that route (then only the original's routes
    were asked) or when the server does not know them yet.
    """

    id: int
    status: Status
    message: str = ""
    service: str | None = None
    user_id: int | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    client: str | None = None
    exit_code: int | None = None
    queue: QueueInfo | None = None
    callback_url: str | None = None

    @property
    def is_final(self) -> bool:
        """The status will not change any more (Cleaned may still replace another final one)."""
        return self.status in TERMINAL or self.status is Status.UNKNOWN

    @property
    def succeeded(self) -> bool:
        return self.status is Status.COMPLETED

    def to_dict(self) -> dict[str, Any]:
        """The job in the shape of the server's `GET /jobs/{id}` answer."""
        return {
            "id": self.id,
            "status": self.status.wire,
            "message": self.message,
            "service": self.service,
            "user_id": self.user_id,
            "created_at": _format_time(self.created_at),
            "started_at": _format_time(self.started_at),
            "finished_at": _format_time(self.finished_at),
            "client": self.client,
            "exit_code": self.exit_code,
            "queue": None
            if self.queue is None
            else {
                "position": self.queue.position,
                "reason": self.queue.reason,
                "detail": self.queue.detail,
            },
            "callback_url": self.callback_url,
        }

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Job:
        """Read a `GET /jobs/{id}` (or a `{"id","status","message"}`) object leniently:
        absent or mistyped optional fields become None, an unknown status `Unknown`."""
        queue = body.get("queue")
        return cls(
            id=_int(body.get("id")) or 0,
            status=parse_status(body.get("status")),
            message=_str(body.get("message")) or "",
            service=_str(body.get("service")),
            user_id=_int(body.get("user_id")),
            created_at=_parse_time(body.get("created_at")),
            started_at=_parse_time(body.get("started_at")),
            finished_at=_parse_time(body.get("finished_at")),
            client=_str(body.get("client")),
            exit_code=_int(body.get("exit_code")),
            queue=QueueInfo(
                position=_int(queue.get("position")),
                reason=_str(queue.get("reason")) or "",
                detail=_str(queue.get("detail")) or "",
            )
            if isinstance(queue, dict)
            else None,
            callback_url=_str(body.get("callback_url")),
        )


def parse_status(value: object) -> Status:
    try:
        return Status.from_wire(value) if isinstance(value, str) else Status.UNKNOWN
    except ValueError:
        return Status.UNKNOWN


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _format_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
