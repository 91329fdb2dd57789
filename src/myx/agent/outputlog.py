"""A command's combined output: one append-only spool file addressed by byte offset.

stdout and stderr are interleaved in arrival order into one file; a small index records the
offset where each run of one stream starts.  Readers ask for (offset, limit) and get typed
chunks back, so the same offset always yields the same following bytes, during the run, after
it, and after an agent restart.  Nothing is held in memory but the index.
"""

from __future__ import annotations

import bisect
import os
from typing import List, Tuple

from myx.protocol.output import OutputChunk

DATA_FILE = "output"
INDEX_FILE = "segments"


class OutputLog:
    def __init__(self, directory: str, command_id: str, limit: int) -> None:
        self.directory = directory
        self.command_id = command_id
        self.limit = limit
        self.size = 0
        self.dropped = 0
        self.stream_bytes = {"stdout": 0, "stderr": 0}
        self._starts: List[int] = []
        self._streams: List[str] = []
        self._data_fd = -1
        self._index_fd = -1

    @property
    def data_path(self) -> str:
        return os.path.join(self.directory, DATA_FILE)

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def open_for_append(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC
        self._data_fd = os.open(self.data_path, flags, 0o600)
        self._index_fd = os.open(os.path.join(self.directory, INDEX_FILE), flags, 0o600)

    def close(self) -> None:
        for fd in (self._data_fd, self._index_fd):
            if fd >= 0:
                os.close(fd)
        self._data_fd = self._index_fd = -1

    @classmethod
    def restore(cls, directory: str, command_id: str, limit: int) -> OutputLog:
        """Re-open a spooled log read-only, e.g. after an agent restart."""
        log = cls(directory, command_id, limit)
        try:
            log.size = os.path.getsize(log.data_path)
        except OSError:
            log.size = 0
        try:
            with open(os.path.join(directory, INDEX_FILE), encoding="ascii") as fh:
                lines = fh.read().splitlines()
        except (OSError, UnicodeDecodeError):
            lines = []
        for line in lines:
            offset, _, stream = line.partition(" ")
            # A crash between the index and the data write can leave an entry past the end.
            if offset.isdigit() and stream in log.stream_bytes and int(offset) <= log.size:
                log._add_segment(int(offset), stream)
        log._recount()
        return log

    def append(self, stream: str, data: bytes) -> int:
        """Spool *data*; past the cap it is counted as dropped, never silently lost. Returns bytes kept."""
        room = self.limit - self.size
        keep = data[: max(room, 0)]
        self.dropped += len(data) - len(keep)
        if not keep:
            return 0
        if not self._streams or self._streams[-1] != stream:
            # The index entry goes first so every spooled byte always has a stream.
            _write_all(self._index_fd, f"{self.size} {stream}\n".encode("ascii"))
            self._add_segment(self.size, stream)
        _write_all(self._data_fd, keep)
        self.size += len(keep)
        self.stream_bytes[stream] += len(keep)
        return len(keep)

    def read(self, offset: int, limit: int) -> List[OutputChunk]:
        end = min(self.size, offset + limit)
        if offset >= end:
            return []
        with open(self.data_path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(end - offset)
        end = offset + len(data)
        chunks = []
        i = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        pos = offset
        while pos < end and i < len(self._starts):
            seg_end = self._starts[i + 1] if i + 1 < len(self._starts) else end
            stop = min(seg_end, end)
            if stop > pos:
                chunks.append(
                    OutputChunk(self.command_id, pos, self._streams[i], data[pos - offset : stop - offset])
                )
            pos = stop
            i += 1
        return chunks

    def tail(self, stream: str, max_bytes: int) -> bytes:
        """The last *max_bytes* of one stream (for the result summary)."""
        parts: List[bytes] = []
        wanted = max_bytes
        for start, end in reversed(self._spans(stream)):
            if wanted <= 0:
                break
            take = min(wanted, end - start)
            parts.append(b"".join(c.data for c in self.read(end - take, take)))
            wanted -= take
        return b"".join(reversed(parts))

    def _spans(self, stream: str) -> List[Tuple[int, int]]:
        bounds = [*self._starts[1:], self.size]
        return [(s, e) for s, e, st in zip(self._starts, bounds, self._streams) if st == stream]

    def _add_segment(self, offset: int, stream: str) -> None:
        if self._starts and self._starts[-1] == offset:
            self._streams[-1] = stream  # an empty run left by a crash: the later entry wins
        else:
            self._starts.append(offset)
            self._streams.append(stream)

    def _recount(self) -> None:
        for stream in self.stream_bytes:
            self.stream_bytes[stream] = sum(e - s for s, e in self._spans(stream))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
