"""Command output chunks on the wire and the UTF-8 hold-back rule."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from myx.protocol.output import STREAMS, OutputChunk, chunk_bytes, chunks_from_wire, utf8_safe_end

# --------------------------------------------------------------------------------------------
# OutputChunk.to_wire / chunk_bytes


@pytest.mark.parametrize(
    "data",
    [
        b"hello world\n",
        b"\x00\x01\x7f tabs\tand\r\nnewlines",
        "héllo wörld".encode(),  # 2-byte characters
        "中文输出 €".encode(),  # 3-byte characters
        "emoji 😀🎉".encode(),  # 4-byte characters
        "mixed a£€😀".encode(),
    ],
)
@pytest.mark.parametrize("stream", STREAMS)
def test_utf8_travels_as_text(data: bytes, stream: str) -> None:
    chunk = OutputChunk("c1", 0, stream, data)
    wire = chunk.to_wire()
    assert wire == {"stream": stream, "data": data.decode("utf-8")}
    assert "encoding" not in wire
    assert chunk_bytes(wire) == data
    # ... and through JSON too.
    assert chunk_bytes(json.loads(json.dumps(wire))) == data


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe\xfd",
        b"abc\xe2\x82",  # cut in the middle of a 3-byte character
        b"\xf0\x9f\x98",  # cut 4-byte character
        b"\x80abc",  # stray continuation byte
        b"\xc0\xaf",  # overlong
        b"\xed\xa0\x80",  # encoded surrogate
        bytes(range(256)),
        b"ok \x89PNG\r\n\x1a\n",
    ],
)
def test_invalid_utf8_travels_as_base64(data: bytes) -> None:
    chunk = OutputChunk("c1", 10, "stderr", data)
    wire = chunk.to_wire()
    assert wire["stream"] == "stderr"
    assert wire["encoding"] == "base64"
    assert base64.b64decode(wire["data"], validate=True) == data
    assert chunk_bytes(wire) == data
    assert chunk_bytes(json.loads(json.dumps(wire))) == data


def test_empty_chunk() -> None:
    chunk = OutputChunk("c1", 5, "stdout", b"")
    assert chunk.end == 5
    wire = chunk.to_wire()
    assert wire == {"stream": "stdout", "data": ""}
    assert chunk_bytes(wire) == b""
    assert chunk_bytes({"stream": "stdout", "data": "", "encoding": "base64"}) == b""
    assert chunk_bytes({"stream": "stdout"}) == b""


def test_chunk_end() -> None:
    assert OutputChunk("c", 100, "stdout", "é".encode()).end == 102


def test_chunks_from_wire_rebuilds_offsets() -> None:
    originals = [
        OutputChunk("c1", 7, "stdout", b"abc"),
        OutputChunk("c1", 10, "stderr", b"\xff\x00"),
        OutputChunk("c1", 12, "stdout", "😀".encode()),
        OutputChunk("c1", 16, "stdout", b""),
        OutputChunk("c1", 16, "stderr", b"z"),
    ]
    wire = json.loads(json.dumps([c.to_wire() for c in originals]))
    assert chunks_from_wire("c1", 7, wire) == originals


def test_chunks_from_wire_defaults_stream() -> None:
    assert chunks_from_wire("c", 0, [{"data": "x"}]) == [OutputChunk("c", 0, "stdout", b"x")]
    assert chunks_from_wire("c", 3, []) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.sampled_from(STREAMS), st.integers(min_value=0, max_value=2**40))
def test_wire_round_trip_property(data: bytes, stream: str, offset: int) -> None:
    chunk = OutputChunk("cid", offset, stream, data)
    wire = json.loads(json.dumps(chunk.to_wire()))
    assert chunk_bytes(wire) == data
    assert chunks_from_wire("cid", offset, [wire]) == [chunk]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        assert wire.get("encoding") == "base64"
    else:
        assert "encoding" not in wire


# --------------------------------------------------------------------------------------------
# utf8_safe_end


def _boundaries(text: str) -> list[int]:
    """Byte offsets of the character boundaries of text's UTF-8 encoding."""
    out = [0]
    for ch in text:
        out.append(out[-1] + len(ch.encode("utf-8")))
    return out


EXHAUSTIVE = [
    "",
    "a",
    "abc",
    "£",  # 2 bytes
    "€",  # 3 bytes
    "😀",  # 4 bytes
    "a£€😀",
    "😀€£a",
    "😀😀😀",
    "中文字符",
    "x\U0010ffffy",  # highest code point
    "\u0080\u07ff\u0800\uffff\U00010000",  # first/last of each length
    "a\x00b\x7f",
]


@pytest.mark.parametrize("text", EXHAUSTIVE)
def test_utf8_safe_end_every_prefix(text: str) -> None:
    encoded = text.encode("utf-8")
    bounds = _boundaries(text)
    for k in range(len(encoded) + 1):
        prefix = encoded[:k]
        expected = max(b for b in bounds if b <= k)
        end = utf8_safe_end(prefix)
        assert end == expected, (text, k)
        prefix[:end].decode("utf-8")
        assert k - end <= 3


@pytest.mark.parametrize("text", EXHAUSTIVE)
def test_utf8_safe_end_every_slice(text: str) -> None:
    # Starting mid-stream at a boundary: the result is relative to the slice.
    encoded = text.encode("utf-8")
    bounds = _boundaries(text)
    for start in bounds:
        for stop in range(start, len(encoded) + 1):
            expected = max(b for b in bounds if b <= stop) - start
            assert utf8_safe_end(encoded[start:stop]) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0),
        (b"abc\xc3", 3),
        (b"abc\xe2\x82", 3),
        (b"abc\xf0\x9f\x98", 3),
        (b"\xf0", 0),
        # Not UTF-8 at all: waiting for more bytes will not help, so nothing is held back.
        (b"\xff", 1),
        (b"ab\xff", 3),
        (b"\x80", 1),
        (b"\x80\x80\x80", 3),
        (b"\x80\x80\x80\x80", 4),
        (b"a\x80\x80\x80\x80", 5),
        (b"\xe2\x82\xac\x80", 4),  # a stray continuation after a whole character
        (b"\xc3\xa9\xa9", 3),
    ],
)
def test_utf8_safe_end_edge_cases(data: bytes, expected: int) -> None:
    assert utf8_safe_end(data) == expected


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=40))
def test_utf8_safe_end_bounds_property(data: bytes) -> None:
    end = utf8_safe_end(data)
    assert 0 <= end <= len(data)
    assert len(data) - end <= 3
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return
    data[:end].decode("utf-8")
    assert end == len(data)  # valid UTF-8 is never cut


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=30), st.data())
def test_utf8_safe_end_on_cut_text_property(text: str, data: st.DataObject) -> None:
    encoded = text.encode("utf-8")
    k = data.draw(st.integers(min_value=0, max_value=len(encoded)))
    end = utf8_safe_end(encoded[:k])
    assert end == max(b for b in _boundaries(text) if b <= k)
    encoded[:end].decode("utf-8")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.lists(st.integers(min_value=1, max_value=7), max_size=30))
def test_streaming_reader_never_splits_a_character(text: str, writes: list[int]) -> None:
    """A poller that holds back utf8_safe_end's tail only ever sends whole characters."""
    encoded = text.encode("utf-8")
    pending = b""
    sent: list[bytes] = []
    pos = 0
    for size in writes:
        pending += encoded[pos : pos + size]
        pos += size
        end = utf8_safe_end(pending)
        sent.append(pending[:end])
        pending = pending[end:]
    pending += encoded[pos:]
    sent.append(pending)
    assert b"".join(sent) == encoded
    for piece in sent:
        wire = OutputChunk("c", 0, "stdout", piece).to_wire()
        assert "encoding" not in wire
