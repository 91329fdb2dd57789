"""Command output on the wire: chunks of one stream, text where it is text, base64 where not."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List

STREAMS = ("stdout", "stderr")


@dataclass(frozen=True)
class OutputChunk:
    """A run of bytes from one stream, at byte ``offset`` of the command's combined output."""

    command_id: str
    offset: int
    stream: str
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)

    def to_wire(self) -> Dict[str, Any]:
        # JSON carries text; output that is not UTF-8 (binary, a cut multi-byte character that
        # will never be completed) travels as base64 so no byte is ever altered.
        try:
            return {"stream": self.stream, "data": self.data.decode("utf-8")}
        except UnicodeDecodeError:
            return {
                "stream": self.stream,
                "data": base64.b64encode(self.data).decode("ascii"),
                "encoding": "base64",
            }


def chunk_bytes(chunk: Dict[str, Any]) -> bytes:
    """The exact bytes a wire chunk carries."""
    data = chunk.get("data", "")
    if chunk.get("encoding") == "base64":
        return base64.b64decode(data)
    return str(data).encode("utf-8")


def chunks_from_wire(command_id: str, offset: int, chunks: Iterable[Dict[str, Any]]) -> List[OutputChunk]:
    """Rebuild typed chunks from a ``get_command_log`` result starting at *offset*."""
    out = []
    for chunk in chunks:
        data = chunk_bytes(chunk)
        out.append(OutputChunk(command_id, offset, str(chunk.get("stream", "stdout")), data))
        offset += len(data)
    return out


def utf8_safe_end(data: bytes) -> int:
    """Length of the longest prefix of *data* that does not end inside a UTF-8 sequence.

    Used to hold back at most three bytes of a character that is still being written, so a
    reader that polls mid-character receives it whole on its next read.
    """
    n = len(data)
    i = n - 1
    while i >= 0 and n - i < 4 and data[i] & 0xC0 == 0x80:
        i -= 1
    if i < 0:
        return n
    lead = data[i]
    if lead < 0x80:
        need = 1
    elif lead >> 5 == 0b110:
        need = 2
    elif lead >> 4 == 0b1110:
        need = 3
    elif lead >> 3 == 0b11110:
        need = 4
    else:
        return n  # not a lead byte: this is not UTF-8, and waiting will not fix it
    return i if n - i < need else n
