"""An upload turned into a queued job, or refused with a reason: the service behind /upload.

`UploadService.receive` reads the multipart body into a staging directory, checks who may
upload what, and creates the job; it answers an `UploadAccepted` or an `UploadRefused` and
knows nothing of HTTP status codes (the route maps the reasons, api.py). A refused upload
leaves nothing behind, and no upload can break another's. The app's lifespan builds the one
service (context.py).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from starlette.requests import ClientDisconnect

from job_orchestrator._descriptors import is_exhaustion
from job_orchestrator._fs import remove_tree
from job_orchestrator.config import ServerSettings
from job_orchestrator.errors import QueueFullError, StoreError, StoreUnavailableError
from job_orchestrator.filenames import UnsafeFileNameError, sanitize_filename
from job_orchestrator.multipart import (
    PARSE_ERROR_MESSAGE,
    BodyIdleError,
    BodyTooLargeError,
    BoundaryError,
    MalformedBodyError,
    MultipartError,
    read_multipart,
)
from job_orchestrator.server.callbacks import MAX_URL_CHARS, CallbackURLError
from job_orchestrator.server.delivery import CallbackDeliverer
from job_orchestrator.server.jobfiles import INPUT_DIR
from job_orchestrator.server.principal import Principal
from job_orchestrator.server.storage import Store
from job_orchestrator.server.uploads import Staging, UploadLimits
from job_orchestrator.wire import parse_i32

logger = logging.getLogger(__name__)

_UPLOAD_FIELDS = ("user_id", "service", "callback_url")
#: Longer user_id, service or callback_url values are invalid whatever they hold
#: (docs/differences.md).
_MAX_UPLOAD_FIELD_BYTES = 64 * 1024
#: Where upstream's handler was when a body ended early (UPSTREAM §3.2).
_TRUNCATED = {
    "file": f"Could not save file: Chunk read failed: {PARSE_ERROR_MESSAGE}",
    "text": f"Error reading text field: {PARSE_ERROR_MESSAGE}",
}


class Reason(enum.Enum):
    """Why an upload was not queued."""

    #: The form is wrong (a field missing or invalid, a malformed body, a file name).
    INVALID = enum.auto()
    #: The multipart boundary itself is wrong (answered in plain text, as the original).
    BAD_BOUNDARY = enum.auto()
    #: The caller may not upload for that user.
    FORBIDDEN = enum.auto()
    TOO_LARGE = enum.auto()
    #: The sender stopped sending (UPLOAD_IDLE_TIMEOUT).
    IDLE = enum.auto()
    #: The user has QUEUE_MAX_PER_USER jobs queued already.
    QUEUE_FULL = enum.auto()
    #: Too many uploads at once (UPLOAD_MAX_CONCURRENT, UPLOAD_MAX_PER_CLIENT).
    BUSY = enum.auto()
    DATABASE_UNAVAILABLE = enum.auto()
    OUT_OF_DESCRIPTORS = enum.auto()
    #: Our own failure (the disk, the database).
    FAILED = enum.auto()


@dataclass(frozen=True, slots=True)
class UploadAccepted:
    job_id: int


@dataclass(frozen=True, slots=True)
class UploadRefused:
    reason: Reason
    message: str


UploadOutcome = UploadAccepted | UploadRefused


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """What the route hands over: the body, as it arrives, and what was said about it."""

    body: AsyncIterator[bytes]
    content_type: str | None
    declared_length: str
    caller_address: str
    caller: Principal


def too_large_message(limit: int) -> str:
    return f"Request body exceeds the upload limit of {limit} bytes ({limit // 2**20} MiB)"


@dataclass(frozen=True, slots=True)
class UploadService:
    """What an upload needs of the server: the settings, the store, the engine's upload limits
    (which the cleaner reads too), the callback policy, and the dispatcher to wake."""

    settings: ServerSettings
    store: Store
    limits: UploadLimits
    callbacks: CallbackDeliverer
    wake_dispatch: Callable[[], None]

    async def receive(self, upload: UploadRequest) -> UploadOutcome:
        limit = self.settings.upload_limit_bytes
        if upload.declared_length.isdigit() and int(upload.declared_length) > limit:
            return UploadRefused(Reason.TOO_LARGE, too_large_message(limit))
        if not self.limits.admit(upload.caller_address):
            return UploadRefused(Reason.BUSY, "Too many uploads in progress; retry later")
        staging = Staging(self.settings.data_path)
        try:
            with self.limits.tracking(staging):
                return await _receive(self, upload, staging)
        finally:
            self.limits.release(upload.caller_address)


async def _receive(
    uploads: UploadService, upload: UploadRequest, staging: Staging
) -> UploadOutcome:
    """Read the form into `staging`, check it, and turn it into a queued job."""
    files_dir = staging.path / INPUT_DIR
    keep = False
    try:
        await asyncio.to_thread(staging.create)
        files_dir.mkdir()
    except OSError as error:
        staging.close()
        await asyncio.to_thread(remove_tree, staging.path)
        if is_exhaustion(error):
            logger.warning("upload refused: %s", error)
            return UploadRefused(Reason.OUT_OF_DESCRIPTORS, str(error))
        logger.exception("could not create %s", files_dir)
        return UploadRefused(Reason.FAILED, "Could not create job directory")
    try:
        outcome = await _queue(uploads, upload, staging)
        keep = isinstance(outcome, UploadAccepted)
        return outcome
    except BoundaryError as error:
        return UploadRefused(Reason.BAD_BOUNDARY, str(error))
    except BodyTooLargeError:
        return UploadRefused(
            Reason.TOO_LARGE, too_large_message(uploads.settings.upload_limit_bytes)
        )
    except BodyIdleError as error:
        return UploadRefused(
            Reason.IDLE, f"No data received for {error.timeout_s:g} s; upload abandoned"
        )
    except ClientDisconnect:
        return UploadRefused(Reason.INVALID, "Request body incomplete")
    except MalformedBodyError as error:
        return UploadRefused(
            Reason.INVALID, _TRUNCATED.get(error.inside or "", f"Multipart error: {error}")
        )
    except (MultipartError, UnsafeFileNameError) as error:
        return UploadRefused(Reason.INVALID, f"Multipart error: {error}")
    except OSError as error:
        if is_exhaustion(error):
            logger.warning("upload refused: %s", error)
            return UploadRefused(Reason.OUT_OF_DESCRIPTORS, str(error))
        logger.exception("could not save an upload")
        return UploadRefused(Reason.FAILED, f"Could not save file: {error.strerror}")
    finally:
        staging.close()
        if not keep:
            # A refused upload leaves nothing behind.
            await asyncio.to_thread(remove_tree, staging.path)


async def _queue(uploads: UploadService, upload: UploadRequest, staging: Staging) -> UploadOutcome:
    settings = uploads.settings
    caller = upload.caller
    form = await read_multipart(
        upload.body,
        upload.content_type,
        staging.path / INPUT_DIR,
        name_for_file=_upload_file_name,
        keep_fields=_UPLOAD_FIELDS,
        max_field_bytes=_MAX_UPLOAD_FIELD_BYTES,
        max_body_bytes=settings.upload_limit_bytes,
        idle_timeout_s=settings.upload_idle_timeout_s or None,
    )
    fields = form.fields
    # A user's token or JWT says who; without authentication or from a portal, the form.
    if "user_id" not in fields and "user_id" not in form.oversized and caller.user_id is None:
        return UploadRefused(Reason.INVALID, "Missing user_id field")
    if "user_id" in form.oversized:
        user_id: int | None = None
    else:
        user_id = parse_i32(fields["user_id"]) if "user_id" in fields else caller.user_id
    if not isinstance(user_id, int):
        return UploadRefused(Reason.INVALID, "Invalid user_id, should be a number")
    if not caller.may_act_for(user_id):
        return UploadRefused(Reason.FORBIDDEN, _not_for(caller))
    if "service" not in fields and "service" not in form.oversized:
        return UploadRefused(Reason.INVALID, "Missing service field")
    service = fields.get("service", "").lower()
    if service not in settings.services:
        return UploadRefused(Reason.INVALID, "Invalid service")
    callback_url = await _callback_url(uploads.callbacks, fields, form.oversized)
    if isinstance(callback_url, UploadRefused):
        return callback_url
    loc = await asyncio.to_thread(staging.commit)
    try:
        job_id = await uploads.store.create_job(
            user_id=user_id,
            service=service,
            loc=str(loc),
            callback_url=callback_url,
            token_name=caller.name,
            # Counted with the insert: a read of its own was a round trip more per upload.
            queue_max=settings.queue_max_per_user,
        )
    except QueueFullError:
        await asyncio.to_thread(remove_tree, loc)
        return UploadRefused(
            Reason.QUEUE_FULL,
            f"Too many queued jobs for user {user_id} (at most {settings.queue_max_per_user}, "
            "QUEUE_MAX_PER_USER); retry later",
        )
    except StoreError as error:
        logger.exception("could not add a job")
        await asyncio.to_thread(remove_tree, loc)
        if isinstance(error, StoreUnavailableError):
            return UploadRefused(Reason.DATABASE_UNAVAILABLE, str(error))
        return UploadRefused(Reason.FAILED, "Error while adding the job to the database")
    logger.info(
        "job %d queued for user %d in %s by token %s",
        job_id,
        user_id,
        service,
        caller.name or "-",
        extra={"job_id": job_id, "user_id": user_id, "service": service, "token_name": caller.name},
    )
    uploads.wake_dispatch()
    return UploadAccepted(job_id)


def _upload_file_name(_field: str, filename: str) -> PurePosixPath:
    """The stored name of an uploaded file; names with control characters are refused.

    The dispatch percent-encodes CR and LF (as reqwest does) and nothing decodes them, so
    ``a\\nb`` and ``a%0Ab`` would reach the job as one file; the other control characters
    are refused alike, since no portal means them.
    """
    name = sanitize_filename(filename)
    for char in filename:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            raise UnsafeFileNameError(
                f"file name {filename!r} contains the control character U+{ord(char):04X}; "
                "control characters are not allowed in file names"
            )
    return PurePosixPath(name)


def _not_for(caller: Principal) -> str:
    if caller.is_portal:
        return "user_id is outside the user ids of this portal token"
    return "user_id does not match the token"


async def _callback_url(
    callbacks: CallbackDeliverer, fields: Mapping[str, str], oversized: Collection[str]
) -> str | UploadRefused | None:
    """The upload's callback URL to store (None: the field is absent or empty)."""
    raw = fields.get("callback_url", "")
    if "callback_url" not in oversized and not raw:
        return None
    try:
        if "callback_url" in oversized:
            raise CallbackURLError(f"longer than {MAX_URL_CHARS} characters")
        return await callbacks.accept_url(raw)
    except CallbackURLError as error:
        return UploadRefused(Reason.INVALID, f"Invalid callback_url: {error}")
