"""Bundles the control server pushes with ``sync_bundle``; today only the deployment tool.

A bundle is a .tar.gz whose root becomes the bundle's directory (for the deployment tool,
``deployment_tool_dir``: ``playbooks/``, ``inventory/``, ``ansible.cfg``...).  It is unpacked
into a fresh sibling directory, checked entry by entry (regular files and directories only,
no absolute names, no ``..``, bounded size), then swapped in with renames, so a playbook never
sees half a bundle and a bad archive leaves the installed one untouched.  The installed
bundle's sha256 is kept in ``.bundle-sha256``: sending the same bundle again changes nothing.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import uuid
import zlib
from typing import Any, Dict, Optional, Set

from myx.agent.errors import InvalidInputError

log = logging.getLogger(__name__)

DEPLOYMENT_TOOL = "deployment-tool"
KNOWN_BUNDLES = (DEPLOYMENT_TOOL,)
SHA_FILE = ".bundle-sha256"
MAX_TOTAL_BYTES = 256 << 20
MAX_ENTRIES = 100000
# Tar headers, pax records and padding come on top of the members' data; this bounds what a
# gzip bomb can make us decompress (and hold in memory, for a huge pax header).
MAX_STREAM_BYTES = MAX_TOTAL_BYTES + (32 << 20)
FILE_MODE_MASK = 0o755
_COPY_CHUNK = 1 << 20
_NEW, _OLD = "new", "old"

# Two syncs at once would race on the swap; the agent runs them in executor threads.
_lock = threading.Lock()


def sync(tool_dir: str, name: str, sha256: str, data: bytes) -> Dict[str, Any]:
    """Install *data* (a .tar.gz) as bundle *name* unless the installed one has the same sha256."""
    if name not in KNOWN_BUNDLES:
        raise InvalidInputError(f"unknown bundle {name!r}; known bundles: {', '.join(KNOWN_BUNDLES)}")
    expected = sha256.lower()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise InvalidInputError(f"sha256 mismatch: the data hashes to {actual}, expected {expected}")
    # A symlinked tool dir (/opt/myx-deployment-tool -> /srv/...) keeps pointing at the new one.
    target = os.path.realpath(tool_dir)
    with _lock:
        if installed_sha256(target) == expected:
            return {"status": "unchanged", "sha256": expected}
        parent = os.path.dirname(target)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        _remove_leftovers(target)
        staging = tempfile.mkdtemp(prefix=_sibling_prefix(target, _NEW), dir=parent)
        try:
            files = _extract(data, staging)
            _write_sha(staging, expected)
            os.chmod(staging, 0o755)  # noqa: S103 - the tool dir is read by playbooks, like /opt
            _swap(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log.info("bundle updated name=%s dir=%s sha256=%s files=%d", name, target, expected, files)
    return {"status": "updated", "sha256": expected, "files": files}


def installed_sha256(tool_dir: str) -> Optional[str]:
    """The sha256 recorded by the last successful sync into *tool_dir*, if any."""
    try:
        with open(os.path.join(tool_dir, SHA_FILE), encoding="ascii") as fh:
            return fh.read().strip().lower() or None
    except (OSError, UnicodeDecodeError):
        return None


# Extraction


class _LimitedReader(io.RawIOBase):
    """The decompressed stream, refusing to yield more than *limit* bytes."""

    def __init__(self, source: io.BufferedIOBase, limit: int) -> None:
        super().__init__()
        self.source = source
        self.left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.left <= 0:
            if self.source.read(1):
                raise InvalidInputError(
                    f"the archive unpacks to more than {MAX_STREAM_BYTES >> 20} MiB; "
                    f"a bundle holds at most {MAX_TOTAL_BYTES >> 20} MiB of files"
                )
            return 0
        data = self.source.read(min(len(view), self.left))
        view[: len(data)] = data
        self.left -= len(data)
        return len(data)


def _extract(data: bytes, dest: str) -> int:
    """Unpack the .tar.gz *data* into the empty directory *dest*; returns the number of files."""
    gz = gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
    stream = io.BufferedReader(_LimitedReader(gz, MAX_STREAM_BYTES), _COPY_CHUNK)
    files: Set[str] = set()
    dir_modes: Dict[str, int] = {}
    total = entries = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                entries += 1
                if entries > MAX_ENTRIES:
                    raise InvalidInputError(f"the archive has more than {MAX_ENTRIES} entries")
                rel = _relative_name(member.name)
                path = os.path.join(dest, rel) if rel else dest
                if member.isdir():
                    _make_dir(path, member.name)
                    dir_modes[path] = member.mode
                elif member.isreg():
                    total += member.size
                    if total > MAX_TOTAL_BYTES:
                        raise InvalidInputError(
                            f"the archive's files exceed {MAX_TOTAL_BYTES >> 20} MiB in total"
                        )
                    _write_file(tar, member, path, rel)
                    files.add(path)
                else:
                    raise InvalidInputError(
                        f"archive entry {member.name!r} is a {_kind(member)}; "
                        "a bundle may only hold regular files and directories"
                    )
            # Read to the end so gzip checks its CRC and length: a damaged archive is never installed.
            while stream.read(_COPY_CHUNK):
                pass
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InvalidInputError(f"the bundle is not a valid .tar.gz archive: {exc}") from None
    if not files:
        raise InvalidInputError("the archive holds no files")
    _fix_dir_modes(dest, dir_modes)
    return len(files)


def _relative_name(name: str) -> str:
    """The entry's path below the bundle root ("" for the root itself); unsafe names refused."""
    if name.startswith("/"):
        raise InvalidInputError(f"archive entry {name!r} has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InvalidInputError(f"archive entry {name!r} points outside the bundle ('..')")
    rel = "/".join(parts)
    if rel == SHA_FILE:
        raise InvalidInputError(f"archive entry {name!r} uses a name reserved by the agent")
    return rel


def _make_dir(path: str, name: str) -> None:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InvalidInputError(f"archive entry {name!r} clashes with a file of the same path") from None


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, rel: str) -> None:
    if not rel:
        raise InvalidInputError(f"archive entry {member.name!r} is a file at the bundle root")
    source = tar.extractfile(member)
    if source is None:  # pragma: no cover - isreg() members always have data
        raise InvalidInputError(f"archive entry {member.name!r} has no data")
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise InvalidInputError(
            f"archive entry {member.name!r} clashes with another entry of the same path"
        ) from None
    with open(fd, "wb") as out:
        shutil.copyfileobj(source, out, _COPY_CHUNK)
    # Keep the executable bits (scripts/), never set-id or group/other write; the owner can always
    # read and replace the file.
    os.chmod(path, (member.mode & FILE_MODE_MASK) | 0o600)


def _fix_dir_modes(dest: str, dir_modes: Dict[str, int]) -> None:
    """Directories get their archived mode (at most 0o755, owner always rwx), implicit ones 0o755."""
    for root, dirs, _files in os.walk(dest):
        for name in dirs:
            path = os.path.join(root, name)
            os.chmod(path, (dir_modes.get(path, 0o755) & FILE_MODE_MASK) | 0o700)


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.isdev():
        return "device or FIFO"
    return f"entry of type {member.type!r}"


# Installing


def _sibling_prefix(target: str, role: str) -> str:
    return f".{os.path.basename(target)}.{role}-"


def _write_sha(directory: str, sha256: str) -> None:
    path = os.path.join(directory, SHA_FILE)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w", encoding="ascii") as fh:
        fh.write(sha256 + "\n")


def _swap(staging: str, target: str) -> None:
    """Put *staging* in place of *target*: old one aside, new one in, old one removed."""
    aside: Optional[str] = None
    if os.path.lexists(target):
        aside = os.path.join(os.path.dirname(target), _sibling_prefix(target, _OLD) + uuid.uuid4().hex[:12])
        os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        if aside is not None:
            os.rename(aside, target)
        raise
    if aside is not None:
        _remove(aside)


def _remove_leftovers(target: str) -> None:
    """Staging or set-aside directories an interrupted earlier sync (agent killed) left behind."""
    parent = os.path.dirname(target)
    prefixes = (_sibling_prefix(target, _NEW), _sibling_prefix(target, _OLD))
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if name.startswith(prefixes):
            log.info("removing leftover of an interrupted bundle sync path=%s", os.path.join(parent, name))
            _remove(os.path.join(parent, name))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)
