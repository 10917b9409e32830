"""Sanity check of a job's ``run.sh`` before the client executes it (UPSTREAM §7).

A screen against mistakes and unsophisticated abuse, **not a sandbox**: what the script runs
indirectly (other uploaded files, command names in variables, ``$'\\x63url'``, interpreters reading
code from files or heredocs) passes unseen; real containment is the executor's sandbox option.
Categories, reason strings and their priority are upstream's (§7.1), but the script is read
roughly the way bash reads it (script_lexer.py), which removes upstream's false positives
(§7.2):

* comments are ignored (a ``#`` starting a word outside quotes; ``$#``, ``${#x}`` are not);
  heredoc bodies are data (``at 300 K`` in an input deck is fine), still searched for paths and
  secrets, unless the heredoc feeds a shell (``bash <<EOF``, ``cat <<EOF | sh``);
* tools count only as the command word of a simple command, also after wrappers (``sudo``,
  ``env``, ``nohup``, ``xargs``, ``timeout 5``, ``busybox``...), inside ``sh -c '...'``, with a path
  or quoting (``/usr/bin/wget``, ``./xmrig``, ``c\\url``): ``echo "service started"``, ``ncdump
  data.nc``, ``--mount``, ``stress-strain`` pass. Separators inside quotes still split commands,
  so ``echo "done; mount it"`` is (rarely) rejected;
* ``rm`` is destructive only when recursive or forced and a target is absolute (but a named entry
  below ``/tmp``, ``/var/tmp``, ``/dev/shm`` is fine), in the home directory, contains ``..``, or
  is ``$VAR/``/``$VAR/*`` (empty ``DIR`` makes ``rm -rf "$DIR"/*`` wipe ``/*``; use ``${DIR:?}``).
  ``rm -rf *``, ``rm -rf .``, ``rm -rf ./tmp`` stay in the job directory and pass;
* ``chmod`` is dangerous only when it sets setuid/setgid (``4755``, ``2755``, ``+s``, ``g+s``);
* ``/proc`` only for other processes and kernel interfaces (``/proc/1/...``, ``/proc/*/mem``,
  ``/proc/self/environ``, ``/proc/sys``, ``/proc/kcore``): ``/proc/cpuinfo``, ``/proc/meminfo``
  pass. ``/sys`` only for writes (``> /sys/...``, ``tee``, ``of=``) and ``/sys/kernel``,
  ``firmware``, ``module``, ``power``: reading ``/sys/fs/cgroup/memory.max`` or
  ``/sys/devices/system/cpu`` is how a job learns its resources, so it passes;
* ``/root`` only as an absolute path; ``dd`` into ``/dev/null`` passes; secrets are whole variable
  names (``$TOKEN``, ``${TOKEN}``, ``${AWS_KEY}``, not ``$TOKENIZER``). Upper case is not folded.

Deliberately still rejected: ``busybox nc`` (real network use), any ``rsync``, ``python -c``,
``dd`` from ``/dev/zero``/``/dev/urandom``. Newly caught: base64 into ``sh -c``, ``python3.11 -c``,
``perl -E``, spaced fork bombs, ``nft``, indented ``at``, ``rm -rf ..``/``$HOME``, ``chmod u+s``.
"""

from __future__ import annotations

import enum
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from job_orchestrator.client.script_lexer import SHELL, command_segments, split_script, unquote

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

    @property
    def unsafe(self) -> bool:
        """Refused for what it does (VALIDATE_SCRIPTS=0 lets it run), not for what it lacks."""
        return self.kind is RejectionKind.UNSAFE

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
_NOT_COMMANDS = ("access", "reverse", "environment", "inline", "obfuscated", "persistence: cron ")
# Command word -> reason, for tools that are dangerous whatever their arguments.
_PLAIN = {
    reason.rpartition(": ")[2].split()[0]: reason
    for reason in REASONS
    if ": " in reason and not reason.startswith(_NOT_COMMANDS)
}
_PLAIN |= {"ip6tables": _PLAIN["iptables"], "nft": _PLAIN["nftables"]}
_PLAIN["mkfs"] = "filesystem format command"
# Words that let the real command follow: keywords, grouping and exec/priv/env wrappers.
_WRAPPERS = frozenset(
    (
        *("!", "{", "}", "[[", "if", "then", "else", "elif", "while", "until", "do", "time"),
        *("exec", "sudo", "env", "nohup", "xargs", "nice", "ionice", "timeout", "command"),
        *("builtin", "setsid", "stdbuf", "taskset", "watch", "strace", "busybox", "toybox"),
    )
)


def _abs(path: str) -> str:
    # Literal first (fast search), then: not the tail of ./x/root, /data/root or $DIR/proc.
    return rf"{path}(?<![\w.~}}$-]{path})"


_SELF = r"(?:self|thread-self|\$\$|\$\{?BASHPID\}?)"
# (reason, substring that must be present, pattern), searched in both code and heredoc data.
_TEXT_RULES: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple(
    (reason, needle, re.compile(rx))
    for reason, needle, rx in (
        *((f"access to {path}", path, path) for path in ("/etc/passwd", "/etc/shadow")),
        ("access to /etc/sudoers", "/etc/sudoers", "/etc/sudoers"),
        (
            "access to /proc",
            "/proc/",
            rf"{_abs('/proc')}/(?:{_SELF}/(?:environ|mem|root|map_files|pagemap)"
            rf"|(?!{_SELF}/)[^/\s'\"]+/|(?:sys|kcore|kmem|kallsyms|kmsg|keys|sysrq-trigger"
            r"|config\.gz|modules|kpage\w+)(?![\w.-]))",
        ),
        (
            "access to /sys",
            "/sys/",
            rf"{_abs('/sys')}/(?:kernel|firmware|module|power|hypervisor)(?![\w.-])"
            r"|(?:>>?\|?|\btee\s+(?:-a\s+)?|\bof=)\s*['\"]?/sys/",
        ),
        ("access to SSH keys", "/.ssh", r"(?:~|\$\{?HOME\}?|/root|/home/[^/\s]+)/\.ssh\b"),
        ("access to root home", "/root", rf"{_abs('/root')}(?![\w.-])"),
        ("access to Docker socket", "docker.sock", r"docker\.sock\b"),
        *((f"reverse shell via {dev}", f"{dev}/", f"{dev}/") for dev in ("/dev/tcp", "/dev/udp")),
        ("persistence: cron directory", "/etc/cron", r"/etc/cron"),
        *((f"crypto mining: {m}", m, rf"\b{m}\b") for m in ("xmrig", "minerd", "cpuminer")),
        ("environment secret: AWS", "AWS_", r"\$(?:\{[#!]?)?AWS_"),
        *(
            (f"environment secret: {name}", name, rf"\$(?:\{{[#!]?)?{name}(?!\w)")
            for name in ("SECRET", "TOKEN", "PASSWORD", "API_KEY")
        ),
    )
)

_SHELL_WORD = re.compile(r"(?:\S*/)?(?:ba|da|k|z)?sh")
_C_OPTION = re.compile(r"-\w*c\w*")
_BASE64 = re.compile(r"\bbase64\b")
_PIPE_TO_SHELL = re.compile(rf"\|\s*(?:sudo\s+)?(?:[^\s|;&]*/)?{SHELL}")
_SHELL_RUNS = re.compile(rf"{SHELL}\s+(?:-(?=\w*c)\w++\s|<\()")  # `sh -c ...`, `bash <(...)`
_FUNCTION_BODY = re.compile(r"\(\)\s*\{([^{}]{0,80})")
_TRAILING_NAME = re.compile(r"[\w:]+$")
_PIPE_PAIR = re.compile(r"(?<![\w:])([\w:]+)\s*\|(?=\s*([\w:]+)(?![\w:]))")
_REDIRECT = re.compile(r"\d*(?:[<>]{1,2}|&>>?|[<>]&|>\|)")
_ASSIGN = re.compile(r"[A-Za-z_]\w*(?:\[[^\]]*\])?\+?=")
_WRAPPER_OPT = re.compile(r"[-+].*|\d[\w.:]*|\{\}")
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


def _followed_on_line(text: str, first: re.Pattern[str], then: re.Pattern[str]) -> bool:
    # Only a line's first `first` matters (later ones see less of the line), which keeps it linear.
    pos = 0
    while (match := first.search(text, pos)) is not None:
        newline = text.find("\n", match.end())
        pos = len(text) if newline < 0 else newline
        if then.search(text, match.end(), pos):
            return True
    return False


def _has_fork_bomb(code: str) -> bool:
    """A function whose body pipes it into itself: ``:(){ :|:& };:``, ``f() { f | f & }``."""
    for body in _FUNCTION_BODY.finditer(code):
        name = _TRAILING_NAME.search(code[max(0, body.start() - 64) : body.start()].rstrip())
        pairs = _PIPE_PAIR.finditer(body[1])
        if name and any(pair[1] == pair[2] == name[0] for pair in pairs):
            return True
    return False


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
        arg = unquote(raw)
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
    for arg in map(unquote, args):
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
    if name == "rm":
        return "destructive rm command" if _rm_is_destructive(args) else None
    if name in _INLINE_FLAG:
        return f"inline interpreter: {name}" if args and _INLINE_FLAG[name].match(args[0]) else None
    if _PYTHON.fullmatch(name):
        return "inline interpreter: python" if _python_inline(args) else None
    if name not in ("chmod", "dd"):
        return None
    plain = [unquote(arg) for arg in args]
    if name == "chmod":
        return "dangerous chmod" if any(map(_SETID.search, plain)) else None
    if any(map(_DD_DEVICE_OUT.match, plain)):
        return "direct device write"
    if any(map(_DD_FILL_IN.match, plain)) and "of=/dev/null" not in plain:
        return "disk-filling dd command"
    return None


def _segment_reasons(words: list[str], depth: int = 0) -> Iterator[str]:
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
        name = unquote(word).rpartition("/")[2]
        if name not in _WRAPPERS:
            reason = _command_reason(name, words[i:])
            if reason is not None:
                yield reason
            # `sh -c 'cmd'`, `find -exec sh -c 'cmd'`; the depth cap keeps `sh -c sh -c ...` linear.
            for j in range(i - 1, len(words) - 1 if depth < 3 else 0):
                if _SHELL_WORD.fullmatch(unquote(words[j])) and _C_OPTION.fullmatch(words[j + 1]):
                    inner = " ".join(words[j + 2 :])
                    if inner[:1] in ("'", '"'):  # the -c argument is code: drop its quotes
                        inner = inner[1:].removesuffix(inner[0])
                    for segment in command_segments(inner):
                        yield from _segment_reasons(segment.split(), depth + 1)
                    break
            return
        if name in _PLAIN:  # sudo is a finding itself, and so is what it runs
            yield _PLAIN[name]
        if name == "command" and words[i : i + 1] in (["-v"], ["-V"]):
            return  # `command -v curl` only asks whether curl exists
        after_wrapper = True


def check_script_text(text: str, *, require_exit_trap: bool = False) -> ScriptRejection | None:
    """Check decoded script text; the earliest (upstream order) matching reason is reported."""
    code, data = split_script(text.removeprefix("\ufeff"))
    found = {
        reason
        for reason, needle, rx in _TEXT_RULES
        if (needle in code and rx.search(code)) or (needle in data and rx.search(data))
    }
    if "base64" in code and (
        _followed_on_line(code, _BASE64, _PIPE_TO_SHELL)
        or _followed_on_line(code, _SHELL_RUNS, _BASE64)
    ):
        found.add("obfuscated execution: base64 pipe to shell")
    if "()" in code and _has_fork_bomb(code):
        found.add("fork bomb")
    for segment in command_segments(code):
        found.update(_segment_reasons(segment.split()))
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
