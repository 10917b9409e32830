"""What a server may ask of a payload's container at /submit (our extension; text parts).

- `container_image`: the image to run it in, instead of CONTAINER_IMAGE. It must match one of
  CONTAINER_IMAGES (patterns with `*` and `?`); else the payload ends Failed saying so.
- `container_mounts`: a JSON list of `{"source": "sub/dir", "target": "/abs/path"}`: each
  `source`, a directory inside the payload's work directory, is also mounted (read-write) at
  `target` in the container. Nothing outside the work directory can be named.

Clients that do not know these parts ignore them (text parts are dropped), and so does this
client with EXECUTOR=local or slurm. A request that does not parse is refused at /submit
(400), so a server learns at once. It is kept in the payload directory as `container.json`.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from job_orchestrator.config import ContainerSettings
from job_orchestrator.wire import CONTAINER_IMAGE_FIELD

IMAGE_FIELD = CONTAINER_IMAGE_FIELD
MOUNTS_FIELD = "container_mounts"
FIELDS = (IMAGE_FIELD, MOUNTS_FIELD)
REQUEST_FILE = "container.json"
#: Where the work directory is mounted in the container (run.sh's directory).
WORKDIR = "/work"
#: Where the payload's output.log is mounted (the job's stdout and stderr go there).
LOG_TARGET = "/.job-orchestrator/output.log"
MAX_MOUNTS = 32
#: Targets a mount may not cover: the system's own, and ours.
_RESERVED = ("/proc", "/sys", "/dev", "/.job-orchestrator", WORKDIR, "/tmp")


class ContainerRequestError(ValueError):
    """The request does not parse; the message says why (answered 400)."""


@dataclass(frozen=True, slots=True)
class Mount:
    source: str
    target: str


@dataclass(frozen=True, slots=True)
class ContainerRequest:
    image: str | None = None
    mounts: tuple[Mount, ...] = ()

    @classmethod
    def parse(cls, fields: dict[str, str]) -> ContainerRequest:
        image = fields.get(IMAGE_FIELD, "").strip() or None
        if image is not None and (len(image) > 255 or any(c.isspace() for c in image)):
            raise ContainerRequestError(f"{IMAGE_FIELD}: not an image name")
        text = fields.get(MOUNTS_FIELD, "").strip()
        if not text:
            return cls(image)
        try:
            given = json.loads(text)
        except ValueError:
            raise ContainerRequestError(f"{MOUNTS_FIELD}: not JSON") from None
        if not isinstance(given, list) or len(given) > MAX_MOUNTS:
            raise ContainerRequestError(f"{MOUNTS_FIELD}: expected a list of at most {MAX_MOUNTS}")
        return cls(image, tuple(_mount(entry) for entry in given))

    @classmethod
    def read(cls, root: Path) -> ContainerRequest:
        try:
            values = json.loads((root / REQUEST_FILE).read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as error:
            raise ContainerRequestError(f"unreadable {REQUEST_FILE}: {error}") from None
        mounts = tuple(Mount(str(m["source"]), str(m["target"])) for m in values["mounts"])
        return cls(values.get("image"), mounts)

    def write(self, root: Path) -> None:
        if self.image is None and not self.mounts:
            return
        mounts = [{"source": m.source, "target": m.target} for m in self.mounts]
        (root / REQUEST_FILE).write_text(json.dumps({"image": self.image, "mounts": mounts}))

    def image_allowed(self, settings: ContainerSettings) -> bool:
        if self.image is None or self.image == settings.image:
            return True
        return any(fnmatch.fnmatchcase(self.image, pattern) for pattern in settings.images)

    def make_sources(self, work: Path) -> None:
        """Make the mounts' sources that do not exist yet (an output directory, say), before
        the job runs and before its work directory is handed to its uid."""
        top = work.resolve(strict=True)
        for mount in self.mounts:
            source = work / mount.source
            if not source.exists() and not source.is_symlink():
                if not source.parent.resolve().is_relative_to(top):
                    raise ValueError(f"mount source {mount.source!r} is outside the job")
                source.mkdir(parents=True)

    def mount_options(self, work: Path) -> list[str]:
        """The engine's --mount options; a source that is not a directory of `work` (a link
        out of it, or missing) raises ValueError."""
        options = []
        top = work.resolve(strict=True)
        for mount in self.mounts:
            source = (work / mount.source).resolve(strict=True)
            if not source.is_relative_to(top) or not source.is_dir():
                raise ValueError(f"mount source {mount.source!r} is not a directory of the job")
            options.append(f"--mount=type=bind,source={source},target={mount.target}")
        return options


def _mount(entry: Any) -> Mount:
    if not isinstance(entry, dict) or set(entry) != {"source", "target"}:
        raise ContainerRequestError(f"{MOUNTS_FIELD}: each entry is {{source, target}}")
    source, target = entry["source"], entry["target"]
    if not isinstance(source, str) or not isinstance(target, str):
        raise ContainerRequestError(f"{MOUNTS_FIELD}: source and target are strings")
    relative = PurePosixPath(source)
    if relative.is_absolute() or ".." in relative.parts or not source or "," in source:
        raise ContainerRequestError(f"{MOUNTS_FIELD}: {source!r} is not a relative path")
    normal = posixpath.normpath(target)
    if not target.startswith("/") or normal == "/" or "," in target or "\n" in target:
        raise ContainerRequestError(f"{MOUNTS_FIELD}: {target!r} is not an absolute path")
    if any(normal == reserved or normal.startswith(reserved + "/") for reserved in _RESERVED):
        raise ContainerRequestError(f"{MOUNTS_FIELD}: {target!r} is reserved")
    return Mount(source, normal)
