"""Reads run.sh roughly the way bash reads it, for the validator (validator.py): comments
dropped, heredoc bodies set apart as data unless they feed a shell, and the code split into
simple commands.

All scanning is linear in the script size, so even a 20 MiB script cannot stall the client.
"""

from __future__ import annotations

import re

_BREAK = r" \t\n;&|()<>"  # bash metacharacters; `\r` and NBSP are word characters
_HEREDOC = rf"""(?P<heredoc>(?<!<)<<(?!<)-?[ \t]*
    (?P<delimiter>(?:'[^'\n]*'|"[^"\n]*"|\\.|[^{_BREAK}'"\\])+))"""
_COMMENT = rf"(?P<comment>(?<![^{_BREAK}])(?<!\\[{_BREAK}])\#[^\n]*)"  # `#` starting a word
# Ordinary text: quoted strings, escapes, `#` inside a word (`$#`, `${#x}`), `<<<`, `$((1<<2))`.
_RUN = r"""(?:[^'"\\\#<$%s]++|'[^']*'?|\$'(?:\\.|[^'\\])*'?|"(?:\\.|[^"\\])*"?|\\.|\$(?!')
    |(?<![%s])\#|<(?!<)|<<<+)++"""
_LEX_ANY = re.compile(rf"{_HEREDOC}|{_COMMENT}|{_RUN % ('', _BREAK)}|.", re.VERBOSE | re.DOTALL)
_LEX_LINE = re.compile(  # while a heredoc is pending, stop at the end of its line
    rf"{_HEREDOC}|{_COMMENT}|(?P<newline>\n)|{_RUN % (chr(10), _BREAK)}|.",
    re.VERBOSE | re.DOTALL,
)
#: A shell as a word of its own: `sh`, `bash`, `dash`, `ksh`, `zsh`.
SHELL = r"(?<![\w.-])(?:ba|da|k|z)?sh(?![\w.-])"
_FEEDS_SHELL = re.compile(rf"{SHELL}|/dev/stdin")
_QUOTING = re.compile(r"[\\'\"]")


def split_script(text: str) -> tuple[str, str]:
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
                pending.append(unquote(match["delimiter"]))
        elif kind == "newline":
            sink = code if _FEEDS_SHELL.search(text, line_start, pos) else data
            for delimiter in pending:
                end = _heredoc_end(text, pos, delimiter)
                sink.append(text[pos:end])
                pos = end
            pending.clear()
            line_start = pos
        else:
            newline = token.rfind("\n")
            if newline >= 0:
                line_start = start + newline + 1
            # Arithmetic may span lines; an unbalanced `((` only makes heredocs count as code.
            opened = token.count("((") + token.count("$[") - token.count("))")
            arithmetic = max(0, arithmetic + opened)
    return "".join(code), "".join(data)


def _heredoc_end(text: str, pos: int, delimiter: str) -> int:
    # Lenient about indentation: ending early only means more lines get checked as code.
    while pos < len(text):
        newline = text.find("\n", pos)
        end = len(text) if newline < 0 else newline + 1
        if text[pos:end].strip() == delimiter:
            return end
        pos = end
    return pos


def unquote(word: str) -> str:
    """The word without its quotes and escapes (`c\\url`, `"rm"` are `curl`, `rm`)."""
    return _QUOTING.sub("", word)


def command_segments(code: str) -> list[str]:
    """Split code into simple commands at `;`, `&`, `|`, newlines, parentheses and backticks.

    Separators inside quotes are text (`echo "done; at noon"` is one command), except in a
    `$(...)` or backquoted substitution inside double quotes, which is code of its own. One
    pass with an explicit stack, so the cost stays linear whatever the nesting. A quote that
    is never closed is read as an ordinary character (bash would not run the script at all).
    """
    segments: list[str] = []
    current: list[str] = []
    # One frame per substitution opened inside double quotes: (outer word, closer, depth).
    frames: list[tuple[list[str], str, int]] = []
    depth = 0
    in_double = False
    position, length = 0, len(code)
    while position < length:
        char = code[position]
        if char == "\\":
            current.append(code[position : position + 2])
            position += 2
            continue
        position += 1
        if in_double:
            if char == '"':
                in_double = False
            elif char == "`" or (char == "$" and code.startswith("(", position)):
                closer = "`" if char == "`" else ")"
                position += 0 if char == "`" else 1
                frames.append((current, closer, depth))
                current, depth, in_double = [], 0, False
                continue
            current.append(char)
        elif char == "'" and (end := code.find("'", position)) >= 0:
            current.append(code[position - 1 : end + 1])
            position = end + 1
        elif char == '"' and code.find('"', position) >= 0:
            in_double = True
            current.append(char)
        elif frames and char == frames[-1][1] and (char == "`" or depth == 0):
            segments.append("".join(current))
            current, _closer, depth = frames.pop()
            current.append("$_")
            in_double = True
        elif char in "\n;&|()`":
            depth += 1 if char == "(" else -1 if char == ")" and depth > 0 else 0
            segments.append("".join(current))
            current = []
        else:
            current.append(char)
    segments.append("".join(current))
    segments.extend("".join(outer) for outer, _closer, _depth in frames)
    return segments
