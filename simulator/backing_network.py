"""Backing strings that name a server: libvirt's URI, legacy colon and ``json:`` parsers.

Split from :mod:`simulator.backing` so that a chain of plain files never loads
them; the rules are the same libvirt 9.x rules (``storage_source_backingstore.c``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeAlias

from simulator.backing import BackingLocation, BackingNameError, LocationKind
from simulator.model import NetworkHost

# ---------------------------------------------------------------------------
# C strings and numbers


def _to_bytes(text: str) -> bytes:
    """The bytes behind ``text``; U+DC80..U+DCFF stand for undecodable bytes."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        out = bytearray()
        for char in text:
            code = ord(char)
            if 0xDC80 <= code <= 0xDCFF:
                out.append(code - 0xDC00)
            else:
                out += char.encode("utf-8", "surrogatepass")
        return bytes(out)


def _from_bytes(data: bytes) -> str:
    """Bytes as text, stopping at a NUL like ``g_strndup``; bad bytes become U+DCxx."""
    return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


_C_SPACE = " \t\n\v\f\r"
_UINT32_MAX = 0xFFFFFFFF
_UINT64_MAX = 0xFFFFFFFFFFFFFFFF


def _ascii_strtoull(text: str, base: int) -> tuple[int, int, bool]:
    """GLib's ``g_ascii_strtoull``: (value, end index, overflowed); end 0 means no digits."""
    pos = 0
    while pos < len(text) and text[pos] in _C_SPACE:
        pos += 1
    negative = False
    if pos < len(text) and text[pos] in "+-":
        negative = text[pos] == "-"
        pos += 1
    if base == 16 and text[pos : pos + 1] == "0" and text[pos + 1 : pos + 2] in ("x", "X"):
        pos += 2
    start = pos
    value = 0
    overflow = False
    while pos < len(text):
        char = text[pos]
        if "0" <= char <= "9":
            digit = ord(char) - ord("0")
        elif char.isascii() and char.isalpha():
            digit = ord(char.upper()) - ord("A") + 10
        else:
            break
        if digit >= base:
            break
        if value * base + digit > _UINT64_MAX:
            overflow = True
        else:
            value = value * base + digit
        pos += 1
    if pos == start:
        prefix = text[:start]
        end = start - 1 if len(prefix) >= 2 and prefix[-1] in "xX" and prefix[-2] == "0" else 0
        return 0, end, False
    if overflow:
        return _UINT64_MAX, pos, True
    if negative:
        value = (-value) & _UINT64_MAX
    return value, pos, False


def _strtol_ull(text: str) -> int | None:
    """libvirt's ``virStrToLong_ull`` in base 10 with no trailing text; negatives wrap."""
    value, end, overflow = _ascii_strtoull(text, 10)
    if overflow or end == 0 or end != len(text):
        return None
    return value


def _strtol_uip(text: str) -> int | None:
    """libvirt's ``virStrToLong_uip`` in base 10: no sign '-', whole text, fits 32 bits."""
    value, end, overflow = _ascii_strtoull(text, 10)
    if overflow or end == 0 or end != len(text) or "-" in text[:end] or value > _UINT32_MAX:
        return None
    return value


def _strtol_ui_prefix(text: str, base: int) -> tuple[int, int] | None:
    """libvirt's ``virStrToLong_ui`` with an end pointer: (value, end) or None."""
    value, end, overflow = _ascii_strtoull(text, base)
    if overflow or end == 0:
        return None
    if "-" in text[:end]:
        if (-value) & _UINT64_MAX > _UINT32_MAX:
            return None
        value &= _UINT32_MAX
    if value > _UINT32_MAX:
        return None
    return value, end


def _strtol_i(text: str) -> int | None:
    """libvirt's ``virStrToLong_i`` in base 10 with no trailing text."""
    pos = 0
    while pos < len(text) and text[pos] in _C_SPACE:
        pos += 1
    sign = 1
    if pos < len(text) and text[pos] in "+-":
        sign = -1 if text[pos] == "-" else 1
        pos += 1
    digits = text[pos:]
    if not digits or not all("0" <= char <= "9" for char in digits):
        return None
    value = sign * int(digits)
    if not -(2**31) <= value < 2**31:
        return None
    return value


def _parse_port(text: str | None) -> int:
    """libvirt's ``virStringParsePort``: 0 for no port, else 0..65535."""
    if text is None:
        return 0
    value = _strtol_uip(text)
    if value is None:
        raise BackingNameError(f"failed to parse port number '{text}'")
    if value > 0xFFFF:
        raise BackingNameError(f"port '{text}' out of range")
    return value


# ---------------------------------------------------------------------------
# Protocols, transports and default ports


_PROTOCOLS = (
    "none",
    "nbd",
    "rbd",
    "sheepdog",
    "gluster",
    "iscsi",
    "http",
    "https",
    "ftp",
    "ftps",
    "tftp",
    "ssh",
    "vxhs",
    "nfs",
)
"""libvirt's virStorageNetProtocol names, in enum order."""

_TRANSPORTS = ("tcp", "unix", "rdma")
"""libvirt's virStorageNetHostTransport names."""

_DEFAULT_PORTS = {
    "http": 80,
    "https": 443,
    "ftp": 21,
    "ftps": 990,
    "tftp": 69,
    "sheepdog": 7000,
    "nbd": 10809,
    "ssh": 22,
    "iscsi": 3260,
    "gluster": 24007,
    "vxhs": 9999,
}
"""libvirt's virStorageSourceNetworkDefaultPort; rbd, nfs and none have no default."""


def _assign_default_ports(location: BackingLocation) -> BackingLocation:
    """libvirt's virStorageSourceNetworkAssignDefaultPorts: fill unset TCP ports."""
    if not location.hosts:
        return location
    default = _DEFAULT_PORTS.get(location.protocol or "none")
    hosts = []
    for host in location.hosts:
        port = host.port
        if host.transport == "tcp" and not port:
            port = default
        hosts.append(replace(host, port=port or None))
    return replace(location, hosts=tuple(hosts))


def _host(
    name: str | None = None, port: int = 0, transport: str = "tcp", socket: str | None = None
) -> NetworkHost:
    return NetworkHost(name=name, port=port or None, transport=transport, socket=socket)


# ---------------------------------------------------------------------------
# URIs: libxml2's xmlParseURI (RFC 3986 parser of libxml2 2.9) and libvirt's virURIParse


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SUB_DELIMS = frozenset("!$&'()*+,;=")
_HEX = frozenset("0123456789abcdefABCDEF")
_SCHEME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-.")
_INT_MAX = 0x7FFFFFFF


@dataclass(frozen=True)
class _Uri:
    """The parts of libvirt's virURI that the backing parser reads."""

    scheme: str | None
    server: str | None
    user: str | None
    port: int
    path: str | None
    query: str | None


class _UriParser:
    """libxml2's xmlParse3986URIReference over one string."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.scheme: str | None = None
        self.server: str | None = None
        self.user: str | None = None
        self.port = 0
        self.path: str | None = None
        self.query: str | None = None

    def _char(self, pos: int) -> str:
        return self.text[pos] if pos < len(self.text) else ""

    def _is_pct(self, pos: int) -> bool:
        return (
            self._char(pos) == "%" and self._char(pos + 1) in _HEX and self._char(pos + 2) in _HEX
        )

    def _is_unreserved_or_sub(self, pos: int) -> bool:
        char = self._char(pos)
        return bool(char) and (char in _UNRESERVED or char in _SUB_DELIMS or self._is_pct(pos))

    def _is_pchar(self, pos: int) -> bool:
        return self._is_unreserved_or_sub(pos) or self._char(pos) in (":", "@")

    def _next(self, pos: int) -> int:
        return pos + 3 if self._char(pos) == "%" else pos + 1

    def _unescape(self, start: int, end: int) -> str:
        """xmlURIUnescapeString; a zero length means 'to the end of the string'."""
        if end <= start:
            end = len(self.text)
        data = _to_bytes(self.text[start:end])
        out = bytearray()
        index = 0
        while index < len(data):
            chunk = data[index + 1 : index + 3]
            if (
                data[index] == ord("%")
                and len(chunk) == 2
                and all(chr(byte) in _HEX for byte in chunk)
            ):
                out.append(int(chunk.decode("ascii"), 16))
                index += 3
            else:
                out.append(data[index])
                index += 1
        return _from_bytes(bytes(out))

    def _segment(self, pos: int, forbid: str, empty: bool) -> int | None:
        if not self._is_pchar(pos):
            return pos if empty else None
        while self._is_pchar(pos) and self._char(pos) != forbid:
            pos = self._next(pos)
        return pos

    def _set_path(self, start: int, end: int) -> None:
        self.path = self._unescape(start, end) if end != start else None

    def _path_ab_empty(self, pos: int) -> int | None:
        start = pos
        while self._char(pos) == "/":
            found = self._segment(pos + 1, "", True)
            if found is None:
                return None
            pos = found
        self._set_path(start, pos)
        return pos

    def _path_with_first_segment(self, pos: int, forbid: str, absolute: bool) -> int | None:
        start = pos
        if absolute:
            if self._char(pos) != "/":
                return None
            found = self._segment(pos + 1, "", False)
            if found is None:
                self._set_path(start, pos + 1)
                return pos + 1
        else:
            found = self._segment(pos, forbid, False)
            if found is None:
                return None
        pos = found
        while self._char(pos) == "/":
            found = self._segment(pos + 1, "", True)
            if found is None:
                return None
            pos = found
        self._set_path(start, pos)
        return pos

    def _userinfo(self, pos: int) -> int | None:
        start = pos
        while self._is_unreserved_or_sub(pos) or self._char(pos) == ":":
            pos = self._next(pos)
        if self._char(pos) == "@":
            self.user = self._unescape(start, pos)
            return pos
        return None

    def _host(self, pos: int) -> int | None:
        start = pos
        if self._char(pos) == "[":
            close = self.text.find("]", pos + 1)
            if close < 0:
                return None
            pos = close + 1
        else:
            while self._is_unreserved_or_sub(pos):
                pos = self._next(pos)
        self.server = self._unescape(start, pos) if pos != start else None
        return pos

    def _port(self, pos: int) -> int | None:
        if not "0" <= self._char(pos) <= "9":
            return None
        value = 0
        while "0" <= self._char(pos) <= "9":
            value = value * 10 + ord(self.text[pos]) - ord("0")
            if value > _INT_MAX:
                return None
            pos += 1
        self.port = value
        return pos

    def _authority(self, pos: int) -> int | None:
        after_user = self._userinfo(pos)
        if after_user is not None and self._char(after_user) == "@":
            pos = after_user + 1
        found = self._host(pos)
        if found is None:
            return None
        pos = found
        if self._char(pos) == ":":
            found = self._port(pos + 1)
            if found is None:
                return None
            pos = found
        return pos

    def _query_and_fragment(self, pos: int) -> bool:
        if self._char(pos) == "?":
            start = pos = pos + 1
            while self._is_pchar(pos) or self._char(pos) in ("/", "?"):
                pos = self._next(pos)
            self.query = self.text[start:pos]
        if self._char(pos) == "#":
            pos += 1
            while self._is_pchar(pos) or self._char(pos) in ("/", "?", "[", "]"):
                pos = self._next(pos)
        return pos == len(self.text)

    def _absolute(self) -> bool:
        pos = 0
        if not (self._char(0).isascii() and self._char(0).isalpha()):
            return False
        while self._char(pos) in _SCHEME_CHARS:
            pos += 1
        self.scheme = self.text[:pos]
        if self._char(pos) != ":":
            return False
        pos += 1
        found: int | None
        if self.text.startswith("//", pos):
            found = self._authority(pos + 2)
            if found is not None:
                found = self._path_ab_empty(found)
        elif self._char(pos) == "/":
            found = self._path_with_first_segment(pos, "", True)
        elif self._is_pchar(pos):
            found = self._path_with_first_segment(pos, "", False)
        else:
            found = pos
        return found is not None and self._query_and_fragment(found)

    def _relative(self) -> bool:
        found: int | None
        if self.text.startswith("//"):
            found = self._authority(2)
            if found is not None:
                found = self._path_ab_empty(found)
        elif self._char(0) == "/":
            found = self._path_with_first_segment(0, "", True)
        elif self._is_pchar(0):
            found = self._path_with_first_segment(0, ":", False)
        else:
            found = 0
        return found is not None and self._query_and_fragment(found)

    def _clean(self) -> None:
        self.scheme = self.server = self.user = self.path = self.query = None

    def parse(self) -> _Uri | None:
        if not self._absolute():
            self._clean()
            if not self._relative():
                return None
        server = self.server
        port = self.port if server else 0
        if server and server[0] == "[" and server[-1] == "]" and ":" in server:
            server = server[1:-1]
        return _Uri(self.scheme, server, self.user, port, self.path, self.query)


def _parse_uri(text: str) -> _Uri | None:
    """libvirt's virURIParse: xmlParseURI, no port without a server, IPv6 brackets stripped."""
    return _UriParser(text).parse()


def _parse_backing_uri(uristr: str) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingURI."""
    uri = _parse_uri(uristr)
    if uri is None:
        raise BackingNameError(f"failed to parse backing file location '{uristr}'")
    if uri.scheme is None:
        raise BackingNameError(
            f"backing store '{uristr}' is a URI reference without a scheme"
            " (libvirt fails here without an error message)"
        )
    scheme = uri.scheme.split("+", 1)
    protocol = scheme[0]
    if protocol not in _PROTOCOLS:
        raise BackingNameError(f"invalid backing protocol '{protocol}'")
    transport = "tcp"
    if len(scheme) > 1:
        if scheme[1] not in _TRANSPORTS:
            raise BackingNameError(f"invalid protocol transport type '{scheme[1]}'")
        transport = scheme[1]
    socket = None
    query = uri.query
    if query is not None and protocol not in ("http", "https") and query.startswith("socket="):
        socket = query[len("socket=") :]
    path: str | None = uri.path or ""
    if path and path.startswith("/"):
        path = path[1:]
    if protocol == "nbd" and not path:
        path = None
    volume = None
    if protocol == "gluster" and path is not None:
        slash = path.find("/")
        if slash <= 0:
            raise BackingNameError(
                f"missing volume name or file name in gluster source path '{path}'"
            )
        volume, path = path[:slash], path[slash + 1 :]
    return BackingLocation(
        kind=LocationKind.NETWORK,
        path=path,
        protocol=protocol,
        hosts=(_host(uri.server, uri.port, transport, socket),),
        volume=volume,
        inline_auth=uri.user is not None,
    )


# ---------------------------------------------------------------------------
# The legacy colon syntax: nbd: and rbd:


def _parse_nbd_colon(nbdstr: str) -> BackingLocation:
    """Mirrors virStorageSourceParseNBDColonString."""
    malformed = BackingNameError(f"malformed nbd string '{nbdstr}'")
    nbd = nbdstr
    export = None
    cut = nbd.find(":exportname=")
    if cut >= 0:
        export = nbd[cut + len(":exportname=") :]
        nbd = nbd[:cut]
    if not nbd.startswith("nbd:") or nbd == "nbd:":
        raise malformed
    host_spec = nbd[len("nbd:") :]
    if host_spec.startswith("unix:"):
        socket = host_spec[len("unix:") :]
        if not socket:
            raise malformed
        host = _host(transport="unix", socket=socket)
    else:
        if host_spec.startswith(":"):
            raise malformed
        if host_spec.startswith("["):
            host_spec = host_spec[1:]
            close = host_spec.find("]:")
            if close < 0:
                raise malformed
            name, port = host_spec[:close], host_spec[close + 2 :]
            if not name:
                raise malformed
        else:
            colon = host_spec.find(":")
            if colon < 0:
                raise malformed
            name, port = host_spec[:colon], host_spec[colon + 1 :]
        host = _host(name, _parse_port(port))
    return BackingLocation(kind=LocationKind.NETWORK, path=export, protocol="nbd", hosts=(host,))


class _CBuffer:
    """A NUL-terminated C buffer that the rbd option parser cuts in place."""

    def __init__(self, text: str) -> None:
        self.chars = [*text, "\0"]

    def __getitem__(self, index: int) -> str:
        return self.chars[index] if index < len(self.chars) else "\0"

    def cut(self, index: int) -> None:
        self.chars[index] = "\0"

    def string(self, index: int) -> str:
        """The C string at ``index``; past the allocation it reads as empty."""
        if index >= len(self.chars):
            return ""
        end = self.chars.index("\0", index)
        return "".join(self.chars[index:end])

    def find(self, needle: str, index: int) -> int | None:
        found = self.string(index).find(needle)
        return None if found < 0 else index + found


def _rbd_add_host(buffer: _CBuffer, start: int) -> NetworkHost:
    """Mirrors virStorageSourceRBDAddHost on the host that starts at ``start``.

    For a bracketed host libvirt reads the port three characters past the ']', which can
    lie past the end of its buffer; there it reads whatever memory holds, here nothing.
    """
    hostport = start
    port_at = buffer.find("]", hostport)
    if port_at is not None:
        hostport += 1
        skip = 3
    else:
        port_at = buffer.find("\\:", hostport)
        skip = 2
    port = 0
    if port_at is not None:
        buffer.cut(port_at)
        port = _parse_port(buffer.string(port_at + skip))
    name = ":".join(buffer.string(hostport).split("\\:"))
    return _host(name, port)


def _parse_rbd_colon(rbdstr: str) -> BackingLocation:
    """Mirrors virStorageSourceParseRBDColonString (the ``rbd:`` prefix is optional)."""
    if rbdstr.startswith("rbd:"):
        rbdstr = rbdstr[len("rbd:") :]
    path, sep, options = rbdstr.partition(":")
    path = path.partition("@")[0]
    volume = None
    if "/" in path:
        volume, _, path = path.partition("/")
    hosts: list[NetworkHost] = []
    location = BackingLocation(kind=LocationKind.NETWORK, path=path, protocol="rbd", volume=volume)
    if not sep:
        return location
    buffer = _CBuffer(options)
    pos = 0
    seen_id = False
    while buffer[pos] != "\0":
        end = pos
        while buffer[end] != "\0" and buffer[end] != ":":
            if buffer[end] == "\\":
                end += 1
                if buffer[end] == "\0":
                    break
            end += 1
        if buffer[end] == "\0":
            after = end
        else:
            after = end + 1
            buffer.cut(end)
        option = buffer.string(pos)
        if option.startswith("id="):
            if seen_id:
                raise BackingNameError(f"duplicate 'id' found in '{path}'")
            seen_id = True
        if option.startswith("mon_host="):
            host = pos + len("mon_host=")
            while host < end:
                sep_at = host
                while sep_at < end:
                    if buffer[sep_at] == "\\" and buffer[sep_at + 1] in (",", ";", " "):
                        buffer.cut(sep_at)
                        sep_at += 2
                        break
                    sep_at += 1
                hosts.append(_rbd_add_host(buffer, host))
                host = sep_at
        pos = after
    return replace(location, hosts=tuple(hosts))


def _parse_backing_colon(path: str) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingColon."""
    protocol = path.partition(":")[0]
    if protocol not in _PROTOCOLS:
        raise BackingNameError(f"invalid backing protocol '{protocol}'")
    if protocol == "nbd":
        return _parse_nbd_colon(path)
    if protocol == "rbd":
        return _parse_rbd_colon(path)
    if protocol in ("sheepdog", "none"):
        raise BackingNameError(f"backing store parser is not implemented for protocol {protocol}")
    raise BackingNameError(f"malformed backing store path for protocol {protocol}")


# ---------------------------------------------------------------------------
# JSON as libvirt 9.x reads it (yajl 2 through virJSONValueFromString)


@dataclass(frozen=True)
class _JsonNumber:
    """A JSON number kept as its text, as libvirt's virJSONValue keeps it."""

    text: str


@dataclass(frozen=True)
class _JsonNull:
    """JSON's null: a value that is present, unlike a missing key."""


_JSON_NULL = _JsonNull()

_Json: TypeAlias = "dict[str, _Json] | list[_Json] | str | _JsonNumber | bool | _JsonNull"


class _JsonSyntaxError(Exception):
    """yajl's refusal, with its error kind and text."""


class _JsonIncomplete(_JsonSyntaxError):
    """The text ended inside a string: yajl waits for more and reports a premature EOF."""


_JSON_SPACE = b" \t\n\v\f\r"
_JSON_ESCAPES = {
    ord('"'): b'"',
    ord("\\"): b"\\",
    ord("/"): b"/",
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
}
_PREMATURE_EOF = "parse error: premature EOF"


def _utf8_from_codepoint(codepoint: int) -> bytes:
    """yajl's Utf32toUtf8, which also encodes surrogates."""
    if codepoint < 0x80:
        return bytes([codepoint])
    if codepoint < 0x800:
        return bytes([0xC0 | codepoint >> 6, 0x80 | codepoint & 0x3F])
    if codepoint < 0x10000:
        return bytes(
            [0xE0 | codepoint >> 12, 0x80 | codepoint >> 6 & 0x3F, 0x80 | codepoint & 0x3F]
        )
    return bytes(
        [
            0xF0 | codepoint >> 18,
            0x80 | codepoint >> 12 & 0x3F,
            0x80 | codepoint >> 6 & 0x3F,
            0x80 | codepoint & 0x3F,
        ]
    )


class _JsonLexer:
    """yajl's lexer with string validation on, comments off.

    yajl_complete_parse flushes the lexer by feeding one more space, so the text is read
    with a space appended: a number or literal at the very end is judged, while a string
    left open at the end is merely incomplete.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data + b" "
        self.pos = 0

    def _skip_space(self) -> None:
        while self.pos < len(self.data) and self.data[self.pos] in _JSON_SPACE:
            self.pos += 1

    def token(self) -> tuple[str, _Json]:
        """The next token: a punctuation character, 'string' or 'value' with its value, 'eof'."""
        self._skip_space()
        if self.pos >= len(self.data):
            return "eof", _JSON_NULL
        char = chr(self.data[self.pos])
        if char in "{}[]:,":
            self.pos += 1
            return char, _JSON_NULL
        if char == '"':
            return "string", self._string()
        if char == "-" or "0" <= char <= "9":
            return "value", self._number()
        literals: tuple[tuple[str, bool | _JsonNull], ...] = (
            ("true", True),
            ("false", False),
            ("null", _JSON_NULL),
        )
        for word, value in literals:
            if char == word[0]:
                return "value", self._literal(word, value)
        if char == "/":
            raise _JsonSyntaxError(
                "lexical error: probable comment found in input text, comments are not enabled."
            )
        raise _JsonSyntaxError("lexical error: invalid char in json text.")

    def _literal(self, word: str, value: bool | _JsonNull) -> bool | _JsonNull:
        for expected in word.encode():
            if self.pos >= len(self.data):
                raise _JsonSyntaxError(_PREMATURE_EOF)
            if self.data[self.pos] != expected:
                raise _JsonSyntaxError("lexical error: invalid string in json text.")
            self.pos += 1
        return value

    def _digits(self) -> int:
        start = self.pos
        while self.pos < len(self.data) and 0x30 <= self.data[self.pos] <= 0x39:
            self.pos += 1
        return self.pos - start

    def _number(self) -> _JsonNumber:
        start = self.pos
        if self.data[self.pos] == ord("-"):
            self.pos += 1
            if self.pos >= len(self.data):
                raise _JsonSyntaxError(_PREMATURE_EOF)
            if not 0x30 <= self.data[self.pos] <= 0x39:
                raise _JsonSyntaxError(
                    "lexical error: malformed number, a digit is required after the minus sign."
                )
        if self.data[self.pos] == ord("0"):
            self.pos += 1
        else:
            self._digits()
        for marker, what in ((b".", "decimal point"), (b"eE", "exponent")):
            if self.pos < len(self.data) and self.data[self.pos] in marker:
                self.pos += 1
                if (
                    what == "exponent"
                    and self.pos < len(self.data)
                    and self.data[self.pos] in b"+-"
                ):
                    self.pos += 1
                if self.pos >= len(self.data):
                    raise _JsonSyntaxError(_PREMATURE_EOF)
                if not self._digits():
                    raise _JsonSyntaxError(
                        f"lexical error: malformed number, a digit is required after the {what}."
                    )
        return _JsonNumber(self.data[start : self.pos].decode("ascii"))

    def _utf8_sequence(self) -> None:
        lead = self.data[self.pos]
        self.pos += 1
        if lead >> 5 == 0x6:
            follow = 1
        elif lead >> 4 == 0xE:
            follow = 2
        elif lead >> 3 == 0x1E:
            follow = 3
        else:
            raise _JsonSyntaxError("lexical error: invalid bytes in UTF8 string.")
        for _ in range(follow):
            if self.pos >= len(self.data):
                raise _JsonIncomplete(_PREMATURE_EOF)
            if self.data[self.pos] >> 6 != 0x2:
                raise _JsonSyntaxError("lexical error: invalid bytes in UTF8 string.")
            self.pos += 1

    def _string(self) -> str:
        self.pos += 1
        start = self.pos
        while True:
            if self.pos >= len(self.data):
                raise _JsonIncomplete(_PREMATURE_EOF)
            byte = self.data[self.pos]
            if byte == ord('"'):
                break
            if byte == ord("\\"):
                self.pos += 1
                if self.pos >= len(self.data):
                    raise _JsonIncomplete(_PREMATURE_EOF)
                escape = self.data[self.pos]
                self.pos += 1
                if escape == ord("u"):
                    for _ in range(4):
                        if self.pos >= len(self.data):
                            raise _JsonIncomplete(_PREMATURE_EOF)
                        if chr(self.data[self.pos]) not in _HEX:
                            raise _JsonSyntaxError(
                                "lexical error: invalid (non-hex) character occurs after '\\u'"
                                " inside string."
                            )
                        self.pos += 1
                elif escape not in _JSON_ESCAPES:
                    raise _JsonSyntaxError(
                        "lexical error: inside a string, '\\' occurs before a character"
                        " which it may not."
                    )
            elif byte < 0x20:
                raise _JsonSyntaxError("lexical error: invalid character inside string.")
            elif byte >= 0x80:
                self._utf8_sequence()
            else:
                self.pos += 1
        raw = self.data[start : self.pos]
        self.pos += 1
        return _from_bytes(self._decode(raw))

    @staticmethod
    def _decode(raw: bytes) -> bytes:
        """yajl_string_decode: escapes resolved, a lone high surrogate becomes '?'."""
        out = bytearray()
        index = 0
        while index < len(raw):
            byte = raw[index]
            if byte != ord("\\"):
                out.append(byte)
                index += 1
                continue
            escape = raw[index + 1]
            if escape != ord("u"):
                out += _JSON_ESCAPES[escape]
                index += 2
                continue
            codepoint = int(raw[index + 2 : index + 6], 16)
            index += 6
            if codepoint & 0xFC00 == 0xD800:
                if raw[index : index + 2] == b"\\u":
                    low = int(raw[index + 2 : index + 6], 16)
                    codepoint = (
                        (codepoint & 0x3F) << 10
                        | (((codepoint >> 6) & 0xF) + 1) << 16
                        | (low & 0x3FF)
                    )
                    index += 6
                else:
                    out += b"?"
                    continue
            out += _utf8_from_codepoint(codepoint)
        return bytes(out)


def _json_insert(container: dict[str, _Json] | list[_Json], key: str | None, value: _Json) -> None:
    """virJSONParserInsertValue: a repeated key makes the callback cancel the parse."""
    if isinstance(container, list):
        container.append(value)
        return
    assert key is not None
    if key in container:
        raise _JsonSyntaxError("parse error: client cancelled parse via callback return value")
    container[key] = value


def _json_colon(lexer: _JsonLexer) -> None:
    kind = lexer.token()[0]
    if kind == "eof":
        raise _JsonSyntaxError(_PREMATURE_EOF)
    if kind != ":":
        raise _JsonSyntaxError(
            "parse error: object key and value must be separated by a colon (':')"
        )


def _json_from_string(text: str) -> _Json:
    """libvirt's virJSONValueFromString (yajl 2.1 with its defaults), without recursion."""
    lexer = _JsonLexer(_to_bytes(text))
    stack: list[tuple[dict[str, _Json] | list[_Json], str | None]] = []
    root: _Json = _JSON_NULL
    state = "value"
    while True:
        kind, value = lexer.token()
        if kind == "eof":
            raise _JsonSyntaxError(_PREMATURE_EOF)
        if state == "key":
            if kind == "}" and isinstance(stack[-1][0], dict) and not stack[-1][0]:
                stack.pop()
            elif kind != "string":
                raise _JsonSyntaxError("parse error: invalid object key (must be a string)")
            else:
                assert isinstance(value, str)
                stack[-1] = (stack[-1][0], value)
                _json_colon(lexer)
                state = "value"
                continue
        elif state == "value":
            opened: dict[str, _Json] | list[_Json] | None = None
            if kind == "{":
                opened = {}
            elif kind == "[":
                opened = []
            elif kind == "]" and stack and isinstance(stack[-1][0], list) and not stack[-1][0]:
                stack.pop()
            elif kind in ("value", "string"):
                pass
            else:
                raise _JsonSyntaxError("parse error: unallowed token at this point in JSON text")
            if kind != "]":
                item: _Json = opened if opened is not None else value
                if stack:
                    _json_insert(stack[-1][0], stack[-1][1], item)
                    stack[-1] = (stack[-1][0], None)
                else:
                    root = item
                if opened is not None:
                    stack.append((opened, None))
                    state = "key" if isinstance(opened, dict) else "value"
                    continue
        else:
            container = stack[-1][0]
            if kind == ",":
                state = "key" if isinstance(container, dict) else "value"
                if state == "key":
                    kind, value = lexer.token()
                    if kind == "eof":
                        raise _JsonSyntaxError(_PREMATURE_EOF)
                    if kind != "string":
                        raise _JsonSyntaxError("parse error: invalid object key (must be a string)")
                    assert isinstance(value, str)
                    stack[-1] = (container, value)
                    _json_colon(lexer)
                    state = "value"
                continue
            if (isinstance(container, dict) and kind == "}") or (
                isinstance(container, list) and kind == "]"
            ):
                stack.pop()
            elif isinstance(container, dict):
                raise _JsonSyntaxError(
                    "parse error: after key and value, inside map, I expect ',' or '}'"
                )
            else:
                raise _JsonSyntaxError("parse error: after array element, I expect ',' or ']'")
        if not stack:
            try:
                trailing = lexer.token()[0]
            except _JsonIncomplete:
                trailing = "eof"
            except _JsonSyntaxError:
                trailing = "error"
            if trailing != "eof":
                raise _JsonSyntaxError("parse error: trailing garbage")
            return root
        state = "after"


def _deflatten_keys(json: dict[str, _Json]) -> dict[str, _Json]:
    """libvirt's virJSONValueObjectDeflattenKeys: "a.b" keys become nested objects."""
    result: dict[str, _Json] = {}
    for key, value in json.items():
        target = result
        while "." in key:
            first, key = key.split(".", 1)
            if first not in target:
                target[first] = {}
            existing = target[first]
            if not isinstance(existing, dict):
                raise BackingNameError(
                    "mixing nested objects and values is forbidden in JSON deflattening"
                )
            target = existing
        if key in target:
            raise BackingNameError(f"can't deflatten colliding key '{key}'")
        target[key] = _deflatten_keys(value) if isinstance(value, dict) else value
    return result


def _deflatten_arrays(json: _Json) -> _Json:
    """libvirt's virJSONValueObjectDeflattenArrays: objects keyed 0..n-1 become arrays.

    An empty object has no key that fails the test, so it becomes an empty array.
    """
    if not isinstance(json, dict):
        return json
    converted = {key: _deflatten_arrays(value) for key, value in json.items()}
    members: dict[int, _Json] = {}
    for key, value in converted.items():
        index = _strtol_uip(key)
        if index is None or index >= len(converted) or index in members:
            return converted
        members[index] = value
    return [members[index] for index in range(len(converted))]


def _get(json: _Json | None, key: str) -> _Json | None:
    """virJSONValueObjectGet: None when ``json`` is no object or lacks ``key``."""
    return json.get(key) if isinstance(json, dict) else None


def _get_string(json: _Json | None, key: str) -> str | None:
    """virJSONValueObjectGetString."""
    value = _get(json, key)
    return value if isinstance(value, str) else None


def _get_object(json: _Json, key: str) -> dict[str, _Json] | None:
    """virJSONValueObjectGetObject."""
    value = _get(json, key)
    return value if isinstance(value, dict) else None


def _get_array(json: _Json, key: str) -> list[_Json] | None:
    """virJSONValueObjectGetArray."""
    value = _get(json, key)
    return value if isinstance(value, list) else None


def _has_key(json: _Json, key: str) -> bool:
    """virJSONValueObjectHasKey."""
    return isinstance(json, dict) and key in json


def _get_ulong(json: _Json, key: str) -> int | None:
    """virJSONValueObjectGetNumberUlong."""
    value = _get(json, key)
    return _strtol_ull(value.text) if isinstance(value, _JsonNumber) else None


def _get_int(json: _Json, key: str) -> int | None:
    """virJSONValueObjectGetNumberInt."""
    value = _get(json, key)
    return _strtol_i(value.text) if isinstance(value, _JsonNumber) else None


def _network(
    protocol: str, path: str | None, hosts: tuple[NetworkHost, ...] = (), volume: str | None = None
) -> BackingLocation:
    return BackingLocation(
        kind=LocationKind.NETWORK, path=path, protocol=protocol, hosts=hosts, volume=volume
    )


def _json_inet_address(json: _Json | None) -> NetworkHost:
    """Mirrors virStorageSourceParseBackingJSONInetSocketAddress."""
    if json is None:
        raise BackingNameError(
            "missing remote server specification in JSON backing volume definition"
        )
    hostname = _get_string(json, "host")
    if hostname is None:
        raise BackingNameError(
            "missing hostname for tcp backing server in JSON backing volume definition"
        )
    return _host(hostname, _parse_port(_get_string(json, "port")))


def _json_socket_address(json: _Json | None) -> NetworkHost:
    """Mirrors virStorageSourceParseBackingJSONSocketAddress."""
    if json is None:
        raise BackingNameError(
            "missing remote server specification in JSON backing volume definition"
        )
    kind = _get_string(json, "type")
    if kind is None:
        raise BackingNameError("missing socket address type in JSON backing volume definition")
    if kind in ("tcp", "inet"):
        return _json_inet_address(json)
    if kind == "unix":
        socket = _get_string(json, "path") or _get_string(json, "socket")
        if socket is None:
            raise BackingNameError(
                "missing socket path for udp backing server in JSON backing volume definition"
            )
        return _host(transport="unix", socket=socket)
    raise BackingNameError(f"backing store protocol '{kind}' is not yet supported")


def _json_uri_string(uri: str, protocol: str) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingJSONUriStr."""
    location = _parse_backing_uri(uri)
    if location.protocol != protocol:
        raise BackingNameError(
            f"expected protocol '{protocol}' but got '{location.protocol}'"
            " in URI JSON volume definition"
        )
    return location


def _json_path(json: _Json, jsonstr: str, driver: str) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingJSONPath (file, host_device, host_cdrom)."""
    path = _get_string(json, "filename")
    if path is None:
        raise BackingNameError("missing 'filename' field in JSON backing volume definition")
    return BackingLocation(kind=LocationKind.FILE, path=path)


def _json_uri(json: _Json, jsonstr: str, driver: str) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingJSONUri (http, https, ftp, ftps, tftp)."""
    uri = _get_string(json, "url")
    if uri is None:
        raise BackingNameError("missing 'url' in JSON backing volume definition")
    if driver in ("https", "ftps") and _has_key(json, "sslverify"):
        value = _get(json, "sslverify")
        if value != "off" and not isinstance(value, bool):
            raise BackingNameError(
                f"malformed 'sslverify' field in backing store definition '{jsonstr}'"
            )
    if driver in ("http", "https") and _has_key(json, "cookie"):
        cookies = _get_string(json, "cookie")
        if cookies is None:
            raise BackingNameError(
                f"wrong format of 'cookie' field in backing store definition '{jsonstr}'"
            )
        for cookie in cookies.split(";") if cookies else []:
            if "=" not in cookie.lstrip(_C_SPACE):
                raise BackingNameError(
                    f"malformed http cookie '{cookie}' in backing store definition '{jsonstr}'"
                )
    for key in ("readahead", "timeout"):
        if _has_key(json, key) and _get_ulong(json, key) is None:
            raise BackingNameError(
                f"malformed '{key}' field in backing store definition '{jsonstr}'"
            )
    return _json_uri_string(uri, driver)


def _json_gluster(json: _Json, jsonstr: str, driver: str) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingJSONGluster."""
    uri = _get_string(json, "filename")
    if uri is not None:
        return _json_uri_string(uri, "gluster")
    volume = _get_string(json, "volume")
    path = _get_string(json, "path")
    servers = _get_array(json, "server")
    if volume is None or path is None or servers is None:
        raise BackingNameError(
            "missing 'volume', 'path' or 'server' attribute in JSON backing definition"
            " for gluster volume"
        )
    if not servers:
        raise BackingNameError(
            "at least 1 server is necessary in JSON backing definition for gluster volume"
        )
    hosts = tuple(_json_socket_address(server) for server in servers)
    return _network("gluster", path, hosts, volume)


def _json_iscsi(json: _Json, jsonstr: str, driver: str) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingJSONiSCSI; 'user' or 'password' is inline auth."""
    uri = _get_string(json, "filename")
    if uri is not None:
        return _json_uri_string(uri, "iscsi")
    lun_value = _get(json, "lun")
    lun = "0"
    if isinstance(lun_value, str):
        lun = lun_value
    elif isinstance(lun_value, _JsonNumber):
        lun = lun_value.text
    if _get_string(json, "transport") != "tcp":
        raise BackingNameError("only TCP transport is supported for iSCSI volumes")
    portal = _get_string(json, "portal")
    if portal is None:
        raise BackingNameError("missing 'portal' address in iSCSI backing definition")
    target = _get_string(json, "target")
    if target is None:
        raise BackingNameError("missing 'target' in iSCSI backing definition")
    name = portal
    port = 0
    colon = name.rfind(":")
    if colon >= 0 and "]" not in name[colon:]:
        port = _parse_port(name[colon + 1 :])
        name = name[:colon]
    location = _network("iscsi", f"{target}/{lun}", (_host(name, port),))
    auth = _get_string(json, "user") is not None or _get_string(json, "password") is not None
    return replace(location, inline_auth=auth)


def _json_nbd(json: _Json, jsonstr: str, driver: str) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingJSONNbd."""
    path = _get_string(json, "path")
    hostname = _get_string(json, "host")
    server = _get_object(json, "server")
    if path is None and hostname is None and server is None:
        raise BackingNameError(
            "missing host specification of NBD server in JSON backing volume definition"
        )
    if server is not None:
        host = _json_socket_address(server)
    elif path is not None:
        host = _host(transport="unix", socket=path)
    else:
        host = _host(hostname, _parse_port(_get_string(json, "port")))
    return _network("nbd", _get_string(json, "export"), (host,))


def _json_sheepdog(json: _Json, jsonstr: str, driver: str) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingJSONSheepdog."""
    filename = _get_string(json, "filename")
    if filename is not None:
        if "://" in filename:
            return _json_uri_string(filename, "sheepdog")
        raise BackingNameError("missing sheepdog URI in JSON backing volume definition")
    vdi = _get_string(json, "vdi")
    if vdi is None:
        raise BackingNameError("missing sheepdog vdi name")
    return _network("sheepdog", vdi, (_json_socket_address(_get_object(json, "server")),))


def _json_ssh(json: _Json, jsonstr: str, driver: str) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingJSONSSH."""
    path = _get_string(json, "path")
    hostname = _get_string(json, "host")
    server = _get_object(json, "server")
    if (hostname is None and server is None) or path is None:
        raise BackingNameError("missing host/server or path of SSH JSON backing volume definition")
    if server is not None:
        host = _json_inet_address(server)
    else:
        host = _host(hostname, _parse_port(_get_string(json, "port")))
    return _network("ssh", path, (host,))


def _json_rbd(json: _Json, jsonstr: str, driver: str) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingJSONRBD."""
    filename = _get_string(json, "filename")
    if filename is not None:
        return _parse_rbd_colon(filename)
    pool = _get_string(json, "pool")
    image = _get_string(json, "image")
    if pool is None or image is None:
        raise BackingNameError(
            "missing pool or image name in ceph backing volume JSON specification"
        )
    servers = _get_array(json, "server") or []
    hosts = tuple(_json_inet_address(server) for server in servers)
    return _network("rbd", image, hosts, pool)


def _json_vxhs(json: _Json, jsonstr: str, driver: str) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingJSONVxHS."""
    vdisk_id = _get_string(json, "vdisk-id")
    server = _get_object(json, "server")
    if vdisk_id is None or server is None:
        raise BackingNameError(
            "missing 'vdisk-id' or 'server' attribute in JSON backing definition for VxHS volume"
        )
    return _network("vxhs", vdisk_id, (_json_inet_address(server),))


def _json_nfs(json: _Json, jsonstr: str, driver: str) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingJSONNFS."""
    server = _get_object(json, "server")
    if server is None:
        raise BackingNameError(
            "missing 'server' attribute in JSON backing definition for NFS volume"
        )
    if _get_int(json, "user") is None or _get_int(json, "group") is None:
        raise BackingNameError(
            "missing 'user' or 'group' attribute in JSON backing definition for NFS volume"
        )
    path = _get_string(json, "path")
    if path is None:
        raise BackingNameError("missing 'path' attribute in JSON backing definition for NFS volume")
    return _network("nfs", path, (_json_inet_address(server),))


def _pci_address_valid(address: str) -> bool:
    """libvirt's virPCIDeviceAddressParse: four hex numbers, any one separator character."""
    pos = 0
    for field in range(4):
        if field:
            pos += 1
            if pos > len(address):
                return False
        parsed = _strtol_ui_prefix(address[pos:], 16)
        if parsed is None:
            return False
        pos += parsed[1]
    return True


def _json_nvme(json: _Json, jsonstr: str, driver: str) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingJSONNVMe; ``path`` is the PCI address as written."""
    device = _get_string(json, "device")
    if device is None or not _pci_address_valid(device):
        raise BackingNameError("missing or malformed 'device' field of 'nvme' storage")
    if not _get_ulong(json, "namespace"):
        raise BackingNameError("missing or malformed 'namespace' field of 'nvme' storage")
    return _network("nvme", device)


def _json_raw(json: _Json, jsonstr: str, driver: str) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingJSONRaw: a format layer around one protocol layer."""
    slice_offset = slice_size = None
    has_offset, has_size = _has_key(json, "offset"), _has_key(json, "size")
    if has_offset or has_size:
        slice_offset = slice_size = 0
        if has_offset:
            slice_offset = _get_ulong(json, "offset")
            if slice_offset is None:
                raise BackingNameError("malformed 'offset' property of 'raw' driver")
        if has_size:
            slice_size = _get_ulong(json, "size")
            if slice_size is None:
                raise BackingNameError("malformed 'size' property of 'raw' driver")
    file = _get_object(json, "file")
    if file is None:
        raise BackingNameError(f"JSON backing volume definition '{jsonstr}' lacks 'file' object")
    inner = _json_driver(file, jsonstr, allow_format=False)
    return replace(inner, format="raw", slice_offset=slice_offset, slice_size=slice_size)


_JSON_DRIVERS: dict[str, tuple[bool, Callable[[_Json, str, str], BackingLocation]]] = {
    "file": (False, _json_path),
    "host_device": (False, _json_path),
    "host_cdrom": (False, _json_path),
    "http": (False, _json_uri),
    "https": (False, _json_uri),
    "ftp": (False, _json_uri),
    "ftps": (False, _json_uri),
    "tftp": (False, _json_uri),
    "gluster": (False, _json_gluster),
    "iscsi": (False, _json_iscsi),
    "nbd": (False, _json_nbd),
    "sheepdog": (False, _json_sheepdog),
    "ssh": (False, _json_ssh),
    "rbd": (False, _json_rbd),
    "raw": (True, _json_raw),
    "nfs": (False, _json_nfs),
    "vxhs": (False, _json_vxhs),
    "nvme": (False, _json_nvme),
}
"""libvirt's jsonParsers table: driver name -> (is a format driver, parser)."""


def _json_driver(json: _Json, jsonstr: str, allow_format: bool) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingJSONInternal."""
    driver = _get_string(json, "driver")
    if driver is None:
        raise BackingNameError(f"JSON backing volume definition '{jsonstr}' lacks driver name")
    entry = _JSON_DRIVERS.get(driver)
    if entry is None:
        raise BackingNameError(
            f"missing parser implementation for JSON backing volume driver '{driver}'"
        )
    format_driver, parser = entry
    if format_driver and not allow_format:
        raise BackingNameError(
            f"JSON backing volume definition '{jsonstr}' must not have nested format drivers"
        )
    return parser(json, jsonstr, driver)


def _parse_backing_json(jsonstr: str) -> BackingLocation:
    """Mirrors virStorageSourceParseBackingJSON: parse, deflatten, unwrap {"file": {...}}."""
    try:
        root = _json_from_string(jsonstr)
    except _JsonSyntaxError as error:
        raise BackingNameError(f"cannot parse json {jsonstr}: {error}") from None
    if not isinstance(root, dict):
        raise BackingNameError(
            f"JSON backing volume definition '{jsonstr}' is not a JSON object"
            " (libvirt fails here without an error message)"
        )
    deflattened = _deflatten_arrays(_deflatten_keys(root))
    file = None if _has_key(deflattened, "driver") else _get_object(deflattened, "file")
    return _json_driver(deflattened if file is None else file, jsonstr, allow_format=True)


# ---------------------------------------------------------------------------
# The entry point


def parse_network(backing: str) -> BackingLocation:
    """A backing string that is neither a file name nor ``fat:``; default ports filled in."""
    try:
        if backing.startswith("json:"):
            location = _parse_backing_json(backing[len("json:") :])
        elif "://" in backing:
            location = _parse_backing_uri(backing)
        else:
            location = _parse_backing_colon(backing)
    except RecursionError:
        raise BackingNameError(
            f"backing store '{backing[:64]}...' nests deeper than the simulator follows"
        ) from None
    return _assign_default_ports(location)
