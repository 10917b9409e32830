"""The parameters of multipart header values (Content-Type, Content-Disposition), as multer.

Quoted values follow multer 3.1 (UPSTREAM §2), so /upload and /submit read a name exactly as
the original did; a value that is not valid UTF-8 counts as absent. Beyond the original, the
RFC 5987 form ``name*=utf-8''<percent-encoded>`` is read too (reqwest sends nested names such
as ``sub/x.txt`` that way) and wins over ``name`` (RFC 6266 §4.3).
"""

from __future__ import annotations

import urllib.parse

__all__ = ["form_data_boundary", "parse_disposition"]

# python-multipart refuses longer boundaries; RFC 2046 itself stops at 70.
_MAX_BOUNDARY_BYTES = 256
_RFC5987_CHARSETS = {"utf-8": "utf-8", "iso-8859-1": "latin-1"}


def _header_params(value: bytes) -> dict[str, bytes | None]:
    """Parameters after the first ``;`` of a header value; keys lower-cased, first one wins.

    Quoted values follow RFC 7230 (see _quoted_string). An unterminated quoted value is
    ``None``. An unquoted value ends at ``;`` or a space.
    """
    params: dict[str, bytes | None] = {}
    pos = value.find(b";")
    if pos < 0:
        return params
    n = len(value)
    while pos < n:
        while pos < n and value[pos] in b"; \t":
            pos += 1
        key_end = pos
        while key_end < n and value[key_end] not in b"=;":
            key_end += 1
        key = value[pos:key_end].strip().lower().decode("latin-1")
        pos = key_end
        if pos >= n or value[pos] != ord("="):
            continue  # a bare token such as `form-data; inline;` carries no value
        pos += 1
        while pos < n and value[pos] in b" \t":
            pos += 1
        parsed: bytes | None
        if value.startswith(b'"', pos):
            parsed, pos = _quoted_string(value, pos + 1)
        else:
            end = pos
            while end < n and value[end] not in b"; ":
                end += 1
            parsed, pos = value[pos:end], end
        params.setdefault(key, parsed)
    return params


def _quoted_string(value: bytes, start: int) -> tuple[bytes | None, int]:
    """Read a quoted string from just after its opening quote; return (content, end).

    Exactly multer 3.1's rule (UPSTREAM §2), shared by /upload and /submit: the value ends at
    the first ``"`` not preceded by a backslash, and only ``\\"`` is unescaped, so
    ``filename="a\\\\b"`` is ``a\\\\b`` (two backslashes) on both, as on the original.
    """
    end = value.find(b'"', start)
    while end > start and value[end - 1] == 0x5C:
        end = value.find(b'"', end + 1)
    if end < 0:
        return None, len(value)
    return value[start:end].replace(b'\\"', b'"'), end + 1


def _utf8(raw: bytes | None) -> str | None:
    try:
        return None if raw is None else raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _ext_value(raw: bytes | None) -> str | None:
    """Decode an RFC 5987 ``charset'lang'percent-encoded`` value, or ``None``."""
    text = _utf8(raw)
    if text is None or text.count("'") < 2:
        return None
    charset, _language, encoded = text.split("'", 2)
    codec = _RFC5987_CHARSETS.get(charset.lower())
    if codec is None:
        return None
    try:
        return urllib.parse.unquote_to_bytes(encoded).decode(codec)
    except UnicodeDecodeError:
        return None


def parse_disposition(value: bytes) -> tuple[str | None, str | None]:
    """Return ``(name, filename)`` of a Content-Disposition value."""
    params = _header_params(value)
    # RFC 6266 §4.3: the extended form wins when both are present.
    name = _ext_value(params.get("name*")) or _utf8(params.get("name"))
    return name, _utf8(params.get("filename"))


def form_data_boundary(content_type: str | None) -> bytes | None:
    """The boundary of a ``multipart/form-data`` Content-Type; None if it has no usable one."""
    if not content_type:
        return None
    try:
        raw = content_type.encode("latin-1")
    except UnicodeEncodeError:
        return None
    media_type = raw.split(b";", 1)[0].strip().lower()
    boundary = _header_params(raw).get("boundary")
    if media_type != b"multipart/form-data" or not boundary or len(boundary) > _MAX_BOUNDARY_BYTES:
        return None
    return boundary
