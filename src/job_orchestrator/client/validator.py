"""Sanity check of a job's ``run.sh`` before the client executes it (UPSTREAM §7).

A screen against obvious mistakes and unsophisticated abuse, **not a sandbox**: whatever the script
runs indirectly (other uploaded files, command names in variables, ``$'\\x63url'``, interpreters
reading code from files or heredocs, ``find -exec``) passes unseen; real containment is the
executor's sandbox option. Categories, reason strings and their priority are upstream's (§7.1),
but the script is read roughly the way bash reads it, to avoid upstream's false positives (§7.2):

* comments are ignored (a ``#`` starting a word outside quotes; ``$#`` and ``${#x}`` are not);
* heredoc bodies are data (``at 300 K`` in an input deck is fine) unless the heredoc line feeds a
  shell (``bash <<EOF``, ``cat <<EOF | sh``); data is still searched for paths and secrets;
* tools count only as the command word of a simple command, after wrappers (``sudo``, ``env``,
  ``nohup``, ``xargs``, ``timeout 5``, ``busybox``, ``then``...), with any path prefix or quoting
  (``/usr/bin/wget``, ``./xmrig``, ``c\\url``): ``echo "service started"``, ``ncdump data.nc``,
  ``--mount``, ``stress-strain`` pass. Separators inside quotes still start a command, so
  ``bash -c 'a; curl x'`` is caught and, rarely, ``echo "done; mount it"`` is rejected;
* ``rm`` is destructive only when recursive or forced and a target is absolute (except a named
  entry below ``/tmp``, ``/var/tmp``, ``/dev/shm``), in the home directory, contains ``..``, or is
  ``$VAR/``/``$VAR/*`` (an empty ``DIR`` makes ``rm -rf "$DIR"/*`` wipe ``/*``; use ``${DIR:?}``).
  ``rm -rf *``, ``rm -rf .``, ``rm -rf ./tmp`` stay in the job directory and pass;
* ``chmod`` is dangerous only when it sets setuid/setgid (``4755``, ``2755``, ``+s``, ``g+s``);
* ``/proc`` only for other processes and kernel interfaces (``/proc/1/...``, ``/proc/*/mem``,
  ``/proc/self/environ``, ``/proc/sys``, ``/proc/kcore``); ``/proc/cpuinfo``, ``/proc/meminfo``,
  ``/proc/self/status`` pass. ``/sys`` only for writes (``> /sys/...``, ``tee``, ``of=``) and
  ``/sys/{kernel,firmware,module,power,hypervisor}``: reading ``/sys/fs/cgroup/memory.max`` or
  ``/sys/devices/system/cpu/online`` is how a job discovers its resources, so it passes;
* ``/root`` only as an absolute path; ``dd`` writing ``/dev/null`` passes; secrets are whole
  variable names (``$TOKEN``, ``${TOKEN}``, ``${AWS_KEY}``, not ``$TOKENIZER``).

Deliberately still rejected: ``busybox nc`` (real network use), any ``rsync``, ``python -c``,
``dd`` from ``/dev/zero``/``/dev/urandom`` unless into ``/dev/null``. Caught beyond upstream:
base64 into ``sh -c``, ``python3.11 -c``, ``perl -E``, spaced fork bombs, ``nft``, indented ``at``,
``rm -rf ..``/``$HOME``, ``chmod u+s``. Upper case is not folded.
"""

from __future__ import annotations

import enum
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_SCRIPT_BYTES = 20 * 1024 * 1024
TRAP_MESSAGE = (
    "Missing required trap for exit code capture. Add: trap 'echo $? > .orchestrator.exit' EXIT"
)


class RejectionKind(enum.Enum):
    MISSING = "missing"
    UNSAFE = "unsafe"
    MISSING_REQUIREMENT = "missing_requirement"


@dataclass(frozen=True, slots=True)
class ScriptRejection:
    kind: RejectionKind
    reason: str

    def message(self) -> str:
        if self.kind is RejectionKind.MISSING:
            return self.reason
        return f"run.sh rejected: {self.reason}"


_NET = ("curl", "wget", "nc", "ncat", "socat", "ssh", "scp", "sftp", "telnet", "rsync")
# Upstream's 62 reasons in its evaluation order: when several match, the earliest is reported.
REASONS: tuple[str, ...] = (
    *("destructive rm command", "filesystem format command", "direct device write"),
    *("disk-filling dd command", "access to /etc/passwd", "access to /etc/shadow"),
    *("access to /etc/sudoers", "access to /proc", "access to /sys", "access to SSH keys"),
    *("access to root home", "access to Docker socket"),
    *(f"network tool: {tool}" for tool in _NET),
    *("reverse shell via /dev/tcp", "reverse shell via /dev/udp"),
    *("privilege escalation: sudo", "privilege escalation: su", "dangerous chmod"),
    *("ownership change: chown", "container escape: chroot", "container escape: nsenter"),
    *("container escape: unshare", "filesystem manipulation: mount"),
    *("filesystem manipulation: umount", "container escape: docker", "container escape: kubectl"),
    *("kernel manipulation: sysctl", "kernel module: modprobe", "kernel module: insmod"),
    *("kernel module: rmmod", "firewall manipulation: iptables"),
    *("firewall manipulation: nftables", "obfuscated execution: base64 pipe to shell"),
    *("dynamic code execution: eval", "inline interpreter: python", "inline interpreter: perl"),
    *("inline interpreter: ruby", "persistence: crontab", "persistence: cron directory"),
    *("persistence: systemctl", "persistence: service command", "persistence: at scheduler"),
    *("fork bomb", "resource exhaustion: stress", "resource exhaustion: stress-ng"),
    *("crypto mining: xmrig", "crypto mining: minerd", "crypto mining: cpuminer"),
    *(f"environment secret: {name}" for name in ("AWS", "SECRET", "TOKEN", "PASSWORD", "API_KEY")),
)
_RANK = {reason: rank for rank, reason in enumerate(REASONS)}
_NAMED_CATEGORIES = {
    *("network tool", "privilege escalation", "ownership change", "container escape"),
    *("filesystem manipulation", "kernel manipulation", "kernel module"),
    *("firewall manipulation", "dynamic code execution", "resource exhaustion", "crypto mining"),
}
# Command word -> reason for tools that are dangerous whatever their arguments.
_PLAIN: dict[str, str] = {
    reason.rpartition(": ")[2]: reason
    for reason in REASONS
    if reason.rpartition(": ")[0] in _NAMED_CATEGORIES
} | {
    "mkfs": "filesystem format command",
    "ip6tables": "firewall manipulation: iptables",
    "nft": "firewall manipulation: nftables",
    "crontab": "persistence: crontab",
    "systemctl": "persistence: systemctl",
    "service": "persistence: service command",
    "at": "persistence: at scheduler",
}
# Words that let the real command follow: keywords, grouping and exec/priv/env wrappers.
_WRAPPERS = frozenset(
    (
        *("!", "{", "}", "[[", "if", "then", "else", "elif", "while", "until", "do", "time"),
        *("exec", "sudo", "env", "nohup", "xargs", "nice", "ionice", "timeout", "command"),
        *("builtin", "setsid", "stdbuf", "taskset", "watch", "strace", "busybox", "toybox"),
    )
)

_ABS = r"(?<![\w.~}$-])"  # an absolute path, not the tail of ./x/root or $DIR/proc
_SHELL = r"(?<![\w.-])(?:ba|da|k|z)?sh(?![\w.-])"
_SELF = r"(?:self|thread-self|\$\$|\$\{?BASHPID\}?)"
_TEXT_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (reason, re.compile(rx))
    for reason, rx in (
        ("access to /etc/passwd", r"/etc/passwd"),
        ("access to /etc/shadow", r"/etc/shadow"),
        ("access to /etc/sudoers", r"/etc/sudoers"),
        (
            "access to /proc",
            rf"{_ABS}/proc/(?:{_SELF}/(?:environ|mem|root|map_files|pagemap)"
            rf"|(?!{_SELF}/)[^/\s'\"]+/|(?:sys|kcore|kmem|kallsyms|kmsg|keys|sysrq-trigger"
            r"|config\.gz|modules|kpage\w+)(?![\w.-]))",
        ),
        (
            "access to /sys",
            rf"{_ABS}/sys/(?:kernel|firmware|module|power|hypervisor)(?![\w.-])"
            r"|(?:>>?\|?|\btee\s+(?:-a\s+)?|\bof=)\s*['\"]?/sys/",
        ),
        ("access to SSH keys", r"(?:~|\$HOME|\$\{HOME\}|/root|/home/[^/\s]+)/\.ssh(?![\w-])"),
        ("access to root home", rf"{_ABS}/root(?![\w.-])"),
        ("access to Docker socket", r"docker\.sock\b"),
        ("reverse shell via /dev/tcp", r"/dev/tcp/"),
        ("reverse shell via /dev/udp", r"/dev/udp/"),
        ("persistence: cron directory", r"/etc/cron"),
        ("crypto mining: xmrig", r"\bxmrig\b"),
        ("crypto mining: minerd", r"\bminerd\b"),
        ("crypto mining: cpuminer", r"\bcpuminer\b"),
        ("environment secret: AWS", r"\$(?:\{[#!]?)?AWS_"),
        *(
            (f"environment secret: {name}", rf"\$(?:\{{[#!]?)?{name}(?!\w)")
            for name in ("SECRET", "TOKEN", "PASSWORD", "API_KEY")
        ),
    )
)

# Every pattern below is linear in the script size: a 20 MiB script must not stall the client.
_BREAK = r"\s;&|()<>"
_HEREDOC = r"""(?P<heredoc>(?<!<)<<(?!<)-?[ \t]*
    (?:'(?P<d1>[^'\n]+)'|"(?P<d2>[^"\n]+)"|\\?(?P<d3>[A-Za-z_][\w.-]*)))"""
_COMMENT = rf"(?P<comment>(?<![^{_BREAK}])(?<!\\[{_BREAK}])\#[^\n]*)"  # `#` starting a word
# A run of ordinary text: quoted strings, escapes, `#` inside a word (`$#`, `${#x}`), `<<<`.
_RUN = rf"""(?:'[^']*'?|\$'(?:\\.|[^'\\])*'?|"(?:\\.|[^"\\])*"?|\\.|(?<![{_BREAK}])\#
    |<(?!<)|<<<+|[^'"\\\#<%s])++"""
_LEX_ANY = re.compile(rf"{_HEREDOC}|{_COMMENT}|{_RUN % ''}|.", re.VERBOSE | re.DOTALL)
_LEX_LINE = re.compile(  # while a heredoc is pending, stop at the end of its line
    rf"{_HEREDOC}|{_COMMENT}|(?P<newline>\n)|{_RUN % chr(10)}|.", re.VERBOSE | re.DOTALL
)
_FEEDS_SHELL = re.compile(rf"{_SHELL}|/dev/stdin")
# Simple-command boundaries; `sh -c '` too, so the quoted program is checked like a script.
_SHELL_C = rf"{_SHELL}\s+-(?=\w*c)\w++\s+"
_SPLIT = re.compile(rf"[\n;&|()`]|{_SHELL_C}['\"]")
_BASE64 = re.compile(r"\bbase64\b")
_PIPE_TO_SHELL = re.compile(rf"\|\s*(?:sudo\s+)?(?:[^\s|;&]*/)?{_SHELL}")
_SHELL_RUNS = re.compile(rf"{_SHELL_C}|{_SHELL}\s+<\(")
_FUNCTION = re.compile(r"(?<![\w:])([\w:]+)\s*\(\)|\bfunction\s+([\w:]+)")
_SELF_PIPE = re.compile(r"(?<![\w:])([\w:]+)\s*\|\s*\1(?![\w:])")  # `:|:`, `bomb | bomb`
_REDIRECT = re.compile(r"\d*(?:[<>]{1,2}|&>>?|[<>]&|>\|)")
_ASSIGN = re.compile(r"[A-Za-z_]\w*(?:\[[^\]]*\])?\+?=")
_WRAPPER_OPT = re.compile(r"[-+].*|\d[\w.:]*|\{\}")
_QUOTING = re.compile(r"[\\'\"]")
_PYTHON = re.compile(r"python(?:\d+(?:\.\d+)*)?")
_PY_INLINE = re.compile(r"-[bBdEhiIOPqsSuvx]*c")
_PY_FLAGS = re.compile(r"--[\w-]+|-[bBdEhiIOPqsSuvx]+")
_INLINE_FLAG = {"perl": re.compile(r"-[eE](?![A-Za-z])"), "ruby": re.compile(r"-e(?![A-Za-z])")}
_SETID = re.compile(r"^0*[2-7][0-7]{3}$|(?:^|,)[ugoa]*[+=][rwxXst]*s")
_DD_DEVICE_OUT = re.compile(r"of=/dev/(?!(?:null|zero|stdout|stderr)$|fd/)")
_DD_FILL_IN = re.compile(r"if=/dev/(?:zero|u?random)$")
_PARENT = re.compile(r"(?:^|/)\.\.(?:/|$)")
_HOME = re.compile(r"~|\$HOME\b|\$\{HOME\}")
_LEADING_VARS = re.compile(r"(?:\$\w+|\$\{[^}:?]*\})+")
_SCRATCH = re.compile(r"/(?:tmp|var/tmp|dev/shm)/[^/*?\[.]")


def _split_script(text: str) -> tuple[str, str]:
    """Return ``(code, data)``: comments dropped, heredoc bodies moved to data unless they feed
    a shell. Heredoc bodies are consumed raw so an apostrophe in them cannot desync quoting."""
    code: list[str] = []
    data: list[str] = []
    pending: list[str] = []
    pos = line_start = arithmetic = 0
    while pos < len(text):
        match = (_LEX_LINE if pending else _LEX_ANY).match(text, pos)
        assert match is not None  # the final `.` alternative matches any character
        kind, token, start, pos = match.lastgroup, match.group(), match.start(), match.end()
        if kind == "comment":
            continue
        code.append(token)
        if kind == "heredoc":
            if arithmetic <= 0:  # in `$((1 << n))` or `$[1 << n]` it is a shift
                pending.append(match["d1"] or match["d2"] or match["d3"])
        elif kind == "newline":
            sink = code if _FEEDS_SHELL.search(text, line_start, pos) else data
            for delimiter in pending:
                end = _heredoc_end(text, pos, delimiter)
                sink.append(text[pos:end])
                pos = end
            pending.clear()
            line_start, arithmetic = pos, 0
        else:
            newline = token.rfind("\n")
            if newline >= 0:
                line_start, arithmetic, token = start + newline + 1, 0, token[newline + 1 :]
            arithmetic += token.count("((") + token.count("$[") - token.count("))")
    return "".join(code), "".join(data)


def _followed_on_line(text: str, first: re.Pattern[str], then: re.Pattern[str]) -> bool:
    # Only the first `first` of a line matters (later ones see less of it): stays linear.
    pos = 0
    while (match := first.search(text, pos)) is not None:
        pos = text.find("\n", match.end()) % (len(text) + 1)
        if then.search(text, match.end(), pos):
            return True
    return False


def _heredoc_end(text: str, pos: int, delimiter: str) -> int:
    # Lenient about indentation: ending early only means more lines get checked as code.
    while pos < len(text):
        newline = text.find("\n", pos)
        end = len(text) if newline < 0 else newline + 1
        if text[pos:end].strip() == delimiter:
            return end
        pos = end
    return pos


def _unquote(word: str) -> str:
    return _QUOTING.sub("", word)


def _dangerous_rm_target(target: str) -> bool:
    if _PARENT.search(target) or _HOME.match(target):
        return True
    if target.startswith("/"):
        return not _SCRATCH.match(target)
    leading = _LEADING_VARS.match(target)
    return leading is not None and target[leading.end() :] in ("/", "/*", "/.*")


def _rm_is_destructive(args: list[str]) -> bool:
    forced, end_of_options, skip_next = False, False, False
    targets: list[str] = []
    for raw in args:
        if skip_next or _REDIRECT.fullmatch(raw):
            skip_next = not skip_next
            continue
        if "<" in raw or ">" in raw:
            continue
        arg = _unquote(raw)
        if end_of_options or not arg.startswith("-") or arg == "-":
            targets.append(arg)
        elif arg == "--":
            end_of_options = True
        elif arg.startswith("--"):
            forced |= arg in ("--recursive", "--force", "--no-preserve-root")
        else:
            forced |= not set(arg).isdisjoint("rRf")
    return forced and any(_dangerous_rm_target(target) for target in targets)


def _python_inline(args: list[str]) -> bool:
    for arg in map(_unquote, args):
        if _PY_INLINE.match(arg):
            return True
        if not _PY_FLAGS.fullmatch(arg):  # a script, `-m module` or `-`: later words are theirs
            return False
    return False


def _command_reason(name: str, args: list[str]) -> str | None:
    if name.startswith("mkfs."):
        name = "mkfs"
    if name in _PLAIN:
        return _PLAIN[name]
    plain = [_unquote(arg) for arg in args]
    if name == "rm" and _rm_is_destructive(args):
        return "destructive rm command"
    if name == "dd" and any(_DD_DEVICE_OUT.match(arg) for arg in plain):
        return "direct device write"
    if name == "dd" and any(map(_DD_FILL_IN.match, plain)) and "of=/dev/null" not in plain:
        return "disk-filling dd command"
    if name == "chmod" and any(map(_SETID.search, plain)):
        return "dangerous chmod"
    if _PYTHON.fullmatch(name) and _python_inline(args):
        return "inline interpreter: python"
    if name in _INLINE_FLAG and args and _INLINE_FLAG[name].match(args[0]):
        return f"inline interpreter: {name}"
    return None


def _segment_reasons(segment: str) -> Iterator[str]:
    words = segment.split()
    i, after_wrapper = 0, False
    while i < len(words):
        word = words[i]
        if _REDIRECT.fullmatch(word):  # `> out cmd`: the next word is the redirect target
            i += 2
            continue
        i += 1
        if "<" in word or ">" in word or _ASSIGN.match(word):
            continue
        if after_wrapper and _WRAPPER_OPT.fullmatch(word):  # `nice -n 5`, `timeout 10s`
            continue
        name = _unquote(word).rpartition("/")[2]
        if name not in _WRAPPERS:
            reason = _command_reason(name, words[i:])
            if reason is not None:
                yield reason
            return
        if name in _PLAIN:  # sudo is a finding itself, and so is what it runs
            yield _PLAIN[name]
        if name == "command" and words[i : i + 1] in (["-v"], ["-V"]):
            return  # `command -v curl` only asks whether curl exists
        after_wrapper = True


def check_script_text(text: str, *, require_exit_trap: bool = False) -> ScriptRejection | None:
    """Check decoded script text; the earliest (upstream order) matching reason is reported."""
    code, data = _split_script(text.removeprefix("\ufeff"))
    found = {reason for reason, rx in _TEXT_RULES if rx.search(code) or rx.search(data)}
    if _followed_on_line(code, _BASE64, _PIPE_TO_SHELL) or _followed_on_line(
        code, _SHELL_RUNS, _BASE64
    ):
        found.add("obfuscated execution: base64 pipe to shell")
    piped = {match[1] for match in _SELF_PIPE.finditer(code)}
    if piped and any((m[1] or m[2]) in piped for m in _FUNCTION.finditer(code)):
        found.add("fork bomb")
    for segment in _SPLIT.split(code):
        found.update(_segment_reasons(segment))
    if found:
        return ScriptRejection(RejectionKind.UNSAFE, min(found, key=_RANK.__getitem__))
    # Upstream semantics: plain substrings anywhere, so a comment naming them satisfies it.
    if require_exit_trap and not all(s in text for s in ("trap", ".orchestrator.exit", "EXIT")):
        return ScriptRejection(RejectionKind.MISSING_REQUIREMENT, TRAP_MESSAGE)
    return None


def validate_script(path: Path, *, require_exit_trap: bool = False) -> ScriptRejection | None:
    """stat -> size cap -> read -> UTF-8 (BOM fine) -> check_script_text"""
    try:
        info = path.stat()
    except OSError:
        return ScriptRejection(RejectionKind.MISSING, "run.sh not found")
    if not stat.S_ISREG(info.st_mode):  # a directory; a FIFO would block the client forever
        return ScriptRejection(RejectionKind.MISSING, "run.sh is not a regular file")
    if info.st_size > MAX_SCRIPT_BYTES:
        return ScriptRejection(RejectionKind.UNSAFE, "script too large")
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SCRIPT_BYTES + 1)  # bounded even if the file grows meanwhile
    except OSError:
        return ScriptRejection(RejectionKind.MISSING, "run.sh could not be read")
    if len(raw) > MAX_SCRIPT_BYTES:
        return ScriptRejection(RejectionKind.UNSAFE, "script too large")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return ScriptRejection(RejectionKind.UNSAFE, "script is not valid UTF-8")
    return check_script_text(text, require_exit_trap=require_exit_trap)
