"""What a setting is, how the table declares one, and the only ways config reads one.

The list itself is settings_table (with its server's and client's parts).

`default` is the text a loader uses when the variable is unset (None: no value); `shown`
describes a default that is not a literal (computed, or "no limit") the way docs/settings.md does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

AppliesTo = Literal["server", "client", "both"]

#: How a declared `SERVICE_<NAME>_<SUFFIX>` pattern is spelled.
SERVICE_PATTERN_PREFIX = "SERVICE_<NAME>_"
#: The docs' way of writing "unset, nothing".
NO_DEFAULT = "—"


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    default: str | None
    help: str
    applies_to: AppliesTo
    group: str
    shown: str | None = None

    @property
    def default_text(self) -> str:
        """The default as the settings reference's Default column writes it (before any remark)."""
        if self.shown is not None:
            return self.shown
        return NO_DEFAULT if self.default is None else f"`{self.default}`"

    @property
    def literal(self) -> str:
        """The default of a setting that has one (a programming error to ask otherwise)."""
        if self.default is None:
            raise ValueError(f"{self.name} has no literal default")
        return self.default

    @property
    def is_pattern(self) -> bool:
        return self.name.startswith(SERVICE_PATTERN_PREFIX)

    def for_service(self, service: str) -> str:
        """`SERVICE_<NAME>_TIMEOUT` for service `my_app` -> `SERVICE_MY_APP_TIMEOUT`."""
        return self.name.replace("<NAME>", service.upper())


class Declarations:
    """One part of the table: its settings in the order they are declared, which is the order
    the settings reference (docs/settings.md) and `--help-settings` list them in."""

    def __init__(self) -> None:
        self._declared: list[Setting] = []

    def __call__(
        self,
        name: str,
        default: str | None,
        help: str,
        applies_to: AppliesTo,
        group: str,
        shown: str | None = None,
    ) -> Setting:
        setting = Setting(name, default, help, applies_to, group, shown)
        self._declared.append(setting)
        return setting

    def file(self, secret: Setting) -> Setting:
        """`<secret>_FILE`: the secret read from a file at start, so it is in no environment."""
        return self(
            f"{secret.name}_FILE",
            None,
            f"file holding {secret.name} (trailing newlines dropped); not with {secret.name}",
            secret.applies_to,
            secret.group,
        )

    def settings(self) -> tuple[Setting, ...]:
        return tuple(self._declared)


def raw(env: Mapping[str, str], setting: Setting) -> str | None:
    """The variable's text, or the declared default when it is unset (an empty value stays)."""
    return env.get(setting.name, setting.default)


def text(env: Mapping[str, str], setting: Setting) -> str:
    """`raw` of a setting with a literal default, so never None."""
    value = raw(env, setting)
    return setting.literal if value is None else value


def given_or_default(env: Mapping[str, str], setting: Setting) -> str:
    """The variable's text, or the declared default when it is unset or empty."""
    return raw(env, setting) or setting.literal


def describe(settings: Iterable[Setting], program: Literal["server", "client"]) -> str:
    """The settings one program reads, by group, as `--help-settings` prints them."""
    shown = [setting for setting in settings if setting.applies_to in (program, "both")]
    name_width = max(len(setting.name) for setting in shown)
    default_width = max(len(_plain(setting.default_text)) for setting in shown)
    lines = [f"Environment settings of job-orchestrator {program} (details: docs/settings.md):"]
    group = ""
    for setting in shown:
        if setting.group != group:
            group = setting.group
            lines.append(f"\n{group}:")
        default = _plain(setting.default_text)
        lines.append(
            f"  {setting.name:<{name_width}}  {default:<{default_width}}  {_plain(setting.help)}"
        )
    return "\n".join(lines) + "\n"


def _plain(markdown: str) -> str:
    return markdown.replace("`", "")
