"""The OpenAPI document's texts, apart from the code that answers.

- The component schemas: the original's exactly as utoipa 5 derives them from its Rust
  structs (its clients read them), then ours (`GET /jobs/{id}`, `GET /jobs`,
  `GET /services`); app.py adds COMPONENTS to the generated document.
- The answers of the original's routes (api.py), with ours added (401, 429, 503, ...).
- The descriptions every route shares (JSON_STATUS, UNAUTHORIZED, PATH_ERROR, JOB_ID); our
  own routes (views.py, logs.py, services_view.py) declare their answers beside their code.
"""

from __future__ import annotations

from typing import Any

from job_orchestrator.http_common import U32_SCHEMA, id_parameter
from job_orchestrator.server.callbacks import MAX_URL_CHARS
from job_orchestrator.server.queue_view import REASONS
from job_orchestrator.server.waiting import MAX_WAIT_S
from job_orchestrator.status import CLIENT_CONDITIONS, Status

__all__ = [
    "COMPONENTS",
    "DOWNLOAD_PARAMETERS",
    "DOWNLOAD_RESPONSES",
    "HEALTH_RESPONSES",
    "JOB_ID",
    "JSON_STATUS",
    "PARTIAL_RESPONSES",
    "PATH_ERROR",
    "TERMINATE_RESPONSES",
    "UNAUTHORIZED",
    "UPLOAD_FORM",
    "UPLOAD_RESPONSES",
    "WAIT_PARAMETER",
    "ZIP",
]

# ---- the original's -----------------------------------------------------------------------

_I32 = {"type": "integer", "format": "int32"}
_STRING = {"type": "string"}
_STATUS_REF = {"$ref": "#/components/schemas/Status"}
_ORIGINAL_COMPONENTS: dict[str, Any] = {
    "Health": {
        "type": "object",
        "required": ["status", "database"],
        "properties": {"status": _STRING, "database": _STRING},
    },
    "Job": {
        "type": "object",
        "required": ["id", "user_id", "service", "status", "loc", "dest_id"],
        "properties": {
            "id": U32_SCHEMA,
            "user_id": _I32,
            "service": _STRING,
            "status": _STATUS_REF,
            "loc": _STRING,
            "dest_id": U32_SCHEMA,
        },
    },
    "Status": {"type": "string", "enum": [s.wire for s in Status]},
    "StatusBody": {
        "type": "object",
        "required": ["id", "status", "message"],
        "properties": {"id": U32_SCHEMA, "status": _STATUS_REF, "message": _STRING},
    },
}
JOB_ID = id_parameter("Job identifier")
JSON_STATUS = {"application/json": {"schema": {"$ref": "#/components/schemas/StatusBody"}}}
ZIP = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
PATH_ERROR = {"description": "The id is not a u32", "content": {"text/plain": {}}}
UNAUTHORIZED = {
    "description": "No valid bearer token (only when API_TOKENS_FILE is set)",
    "content": JSON_STATUS,
}

#: The form /upload reads (FastAPI cannot derive it: the route reads the body itself).
UPLOAD_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["service"],
                    "properties": {
                        "user_id": {"type": "string", "pattern": "^[+-]?[0-9]+$"},
                        "service": {"type": "string"},
                        "callback_url": {
                            "type": "string",
                            "format": "uri",
                            "maxLength": MAX_URL_CHARS,
                            "description": (
                                "http(s) URL POSTed the job's signed final status "
                                "(needs CALLBACK_SECRET; see docs/api.md, Callbacks)"
                            ),
                        },
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                    },
                }
            }
        },
    }
}

WAIT_PARAMETER = {
    "name": "wait",
    "in": "query",
    "description": (
        "Hold the request until the job is final or this many seconds pass (at most "
        f"{MAX_WAIT_S}), then answer as without it"
    ),
    "required": False,
    "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
}

#: The query of GET /download/{id}: the job's id, and ours, `wait`.
DOWNLOAD_PARAMETERS: dict[str, Any] = {"parameters": [*JOB_ID["parameters"], WAIT_PARAMETER]}

# ---- the original's routes' answers (api.py), with ours added (401, 429, 503, ...) ---------

#: GET /health
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Service is healthy",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
    },
    503: {"description": "The database does not answer"},
}

#: POST /upload
UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"description": "Job queued", "content": JSON_STATUS},
    400: {"description": "Invalid form", "content": {**JSON_STATUS, "text/plain": {}}},
    401: UNAUTHORIZED,
    403: {
        "description": "user_id is not the token's user, nor one of a portal token's",
        "content": JSON_STATUS,
    },
    408: {"description": "The body stalled (UPLOAD_IDLE_TIMEOUT)", "content": JSON_STATUS},
    413: {"description": "Body over the upload limit", "content": JSON_STATUS},
    429: {
        "description": "The user has QUEUE_MAX_PER_USER jobs queued; see Retry-After",
        "content": JSON_STATUS,
    },
    500: {"description": "Storage failure", "content": JSON_STATUS},
    503: {
        "description": (
            "Too many uploads in progress (UPLOAD_MAX_*), or no file descriptor left; "
            "see Retry-After"
        ),
        "content": JSON_STATUS,
    },
}

#: GET /download/{id}
DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "ZIP when Completed, else the status",
        "content": {**ZIP, **JSON_STATUS},
    },
    400: {
        "description": "The id is not a u32 (text), or `wait` is out of range (JSON)",
        "content": {**JSON_STATUS, "text/plain": {}},
    },
    401: UNAUTHORIZED,
    404: {"description": "No such job", "content": JSON_STATUS},
    429: {
        "description": "Too many `wait`s held (WAIT_MAX_*); see Retry-After",
        "content": JSON_STATUS,
    },
    500: {"description": "Result unreadable", "content": JSON_STATUS},
    503: {"description": "No file descriptor left; see Retry-After", "content": JSON_STATUS},
}

#: GET /download_partial/{id}
PARTIAL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "ZIP", "content": ZIP},
    400: PATH_ERROR,
    401: UNAUTHORIZED,
    404: {"description": "No such job, or not on a client", "content": JSON_STATUS},
    413: {
        "description": "The files exceed the client's RESULT_MAX_MB",
        "content": JSON_STATUS,
    },
    500: {"description": "The client could not be read", "content": JSON_STATUS},
}

#: POST /terminate/{id}
TERMINATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Terminated", "content": JSON_STATUS},
    400: PATH_ERROR,
    401: UNAUTHORIZED,
    404: {"description": "No such job", "content": JSON_STATUS},
    409: {"description": "Already finished", "content": JSON_STATUS},
    500: {"description": "The client could not kill it", "content": JSON_STATUS},
}

# ---- ours: GET /jobs/{id}, GET /jobs and GET /services ------------------------------------

_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_JOB_VIEW_COMPONENTS: dict[str, Any] = {
    "JobQueue": {
        "type": "object",
        "required": ["position", "reason", "detail"],
        "properties": {
            "position": {"type": ["integer", "null"], "minimum": 1},
            "reason": {"type": "string", "enum": list(REASONS)},
            "detail": {"type": "string"},
        },
    },
    "JobDetails": {
        "type": "object",
        "required": [
            "id",
            "status",
            "message",
            "service",
            "user_id",
            "created_at",
            "started_at",
            "finished_at",
            "client",
            "exit_code",
            "queue",
            "callback_url",
        ],
        "properties": {
            "id": U32_SCHEMA,
            "status": {"$ref": "#/components/schemas/Status"},
            "message": {"type": "string"},
            "service": {"type": "string"},
            "user_id": {"type": "integer", "format": "int32"},
            "created_at": _NULLABLE_TIME,
            "started_at": _NULLABLE_TIME,
            "finished_at": _NULLABLE_TIME,
            "client": {"type": ["string", "null"]},
            "exit_code": {"type": ["integer", "null"]},
            "queue": {"anyOf": [{"$ref": "#/components/schemas/JobQueue"}, {"type": "null"}]},
            "callback_url": {"type": ["string", "null"]},
        },
    },
    "JobList": {
        "type": "object",
        "required": ["jobs", "next_cursor"],
        "properties": {
            "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/JobDetails"}},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
}

_CLIENT = {
    "type": "object",
    "required": ["name", "url", "state", "load_percent", "capacity"],
    "properties": {
        "name": {"type": "string", "description": "`<service>-<n>`: the n-th client"},
        "url": {
            "type": ["string", "null"],
            "description": "Its base URL; null for callers who are not admins",
        },
        "state": {"type": "string", "enum": list(CLIENT_CONDITIONS)},
        "load_percent": {"type": ["number", "null"]},
        "capacity": {"type": ["integer", "null"], "description": "MAX_CONCURRENT, if set"},
    },
}
_SERVICE_COMPONENTS: dict[str, Any] = {
    "ServiceClient": _CLIENT,
    "Service": {
        "type": "object",
        "required": ["name", "runs_per_user", "max_runs", "timeout_s", "queued", "active"],
        "properties": {
            "name": {"type": "string"},
            "runs_per_user": {"type": "integer"},
            "max_runs": {"type": "integer"},
            "timeout_s": {"type": ["number", "null"]},
            "queued": {"type": "integer", "description": "Queued jobs, every user's"},
            "active": {"type": "integer", "description": "Jobs holding a slot, every user's"},
            "clients": {"type": "array", "items": {"$ref": "#/components/schemas/ServiceClient"}},
        },
    },
    "ServiceList": {
        "type": "object",
        "required": ["services"],
        "properties": {
            "services": {"type": "array", "items": {"$ref": "#/components/schemas/Service"}}
        },
    },
}

#: Every schema the routes refer to, the original's first (the document's order).
COMPONENTS: dict[str, Any] = {**_ORIGINAL_COMPONENTS, **_JOB_VIEW_COMPONENTS, **_SERVICE_COMPONENTS}
