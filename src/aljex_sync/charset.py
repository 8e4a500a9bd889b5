"""Text from Aljex: UTF-8 where it is valid, the legacy charset for every byte where it is not.

Aljex is an old system, and one value can mix both: a name typed in UTF-8 with one cp1252
byte pasted after it (``caf\\xc3\\xa9\\xff``). The rule, for Live Sync values and CSV files
alike, is byte by byte: a valid UTF-8 sequence decodes as UTF-8, and each byte outside one
decodes by the legacy charset. Nothing becomes U+FFFD and no text is refused for its
encoding alone; a byte the legacy charset leaves undefined (cp1252's 0x81, 0x8D, ...) reads
as Latin-1, the one charset that maps every byte.

The fallback is a codec error handler, so the valid UTF-8 around it is still decoded by the
interpreter's own decoder, and a stream decodes chunk by chunk through the incremental
decoder. ``Decoding.fixes`` counts the bytes read by the fallback, so callers can report
how much of the text was not UTF-8.
"""

from __future__ import annotations

import codecs
import threading
from collections.abc import Callable

_local = threading.local()
_registered: set[str] = set()
_lock = threading.Lock()


def _handler_name(legacy_charset: str) -> str:
    """The codec error handler that reads bytes outside UTF-8 by ``legacy_charset``."""
    name = f"aljex-legacy-{codecs.lookup(legacy_charset).name}"
    if name in _registered:
        return name
    with _lock:
        if name not in _registered:
            codecs.register_error(name, _make_handler(legacy_charset))
            _registered.add(name)
    return name


def _make_handler(legacy_charset: str) -> Callable[[UnicodeError], tuple[str, int]]:
    def handler(error: UnicodeError) -> tuple[str, int]:
        if not isinstance(error, UnicodeDecodeError):
            raise error
        bad = error.object[error.start : error.end]
        _local.fixes = getattr(_local, "fixes", 0) + len(bad)
        return "".join(_legacy_byte(b, legacy_charset) for b in bad), error.end

    return handler


def _legacy_byte(byte: int, legacy_charset: str) -> str:
    try:
        return bytes((byte,)).decode(legacy_charset)
    except UnicodeDecodeError:
        return chr(byte)  # Latin-1: undefined in the legacy charset, still never U+FFFD


def error_handler(legacy_charset: str) -> str:
    """The name of the codec error handler that applies the rule, for ``open(errors=...)``.

    Decoding UTF-8 with it (``open(path, encoding="utf-8", errors=error_handler("cp1252"))``)
    reads a whole stream by the rule at the codec's own speed.
    """
    return _handler_name(legacy_charset)


def check_charset(name: str) -> None:
    """Raise LookupError unless ``name`` is a charset Python can decode one byte at a time."""
    info = codecs.lookup(name)
    if getattr(info, "_is_text_encoding", True) is False:
        raise LookupError(f"{name} is not a text encoding")


def decode(data: bytes, legacy_charset: str = "cp1252") -> tuple[str, int]:
    """The text of ``data`` by the mixed rule, and how many bytes were not UTF-8."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    _local.fixes = 0
    text = data.decode("utf-8", _handler_name(legacy_charset))
    return text, int(_local.fixes)


class Decoding:
    """An incremental decoder by the mixed rule, for a file read in chunks.

    ``fixes`` is the number of bytes read by the legacy charset so far. A UTF-8 sequence cut
    by a chunk boundary is held back until the next chunk, as the UTF-8 decoder does.
    """

    def __init__(self, legacy_charset: str = "cp1252") -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(_handler_name(legacy_charset))
        self.fixes = 0

    def decode(self, chunk: bytes, final: bool = False) -> str:
        _local.fixes = 0
        text = self._decoder.decode(chunk, final)
        self.fixes += int(_local.fixes)
        return text
