"""Host status for the agent's ``get_status`` method, read from ``/proc`` and the stdlib only.

The agent must run on any Linux host with a bare CPython >= 3.9 (containers, WSL, gVisor included), so
nothing here may depend on psutil or on a /proc file having the layout a full kernel gives it: whatever
cannot be read is reported as ``None`` (or left out, for disks) instead of raising.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import socket
import threading
from typing import Dict, List, Optional, Set, Tuple, Union

__all__ = [
    "CpuSampler",
    "collect_status",
    "disks",
    "load_average",
    "memory",
    "os_release",
    "system_uptime",
]

# Pseudo and in-memory filesystems: their "usage" says nothing about the host's storage. overlay is kept on
# purpose because it is the root filesystem of every container; squashfs is dropped because each snap is a
# read-only, always-100%-full image that would drown the real disks.
_IGNORED_FSTYPES = frozenset(
    {
        "autofs",
        "binfmt_misc",
        "bpf",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fusectl",
        "hugetlbfs",
        "mqueue",
        "nfsd",
        "nsfs",
        "proc",
        "pstore",
        "ramfs",
        "rootfs",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "squashfs",
        "sysfs",
        "tmpfs",
        "tracefs",
    }
)

# The kernel escapes space, tab, newline and backslash in mount fields as three octal digits (\040 ...).
# The first digit is limited to 0-3 so a stray backslash can never decode to a value above one byte.
_MOUNT_ESCAPE = re.compile(rb"\\([0-3][0-7]{2})")

_KIB = 1024


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _read_stat_totals(proc_root: str) -> Optional[Tuple[int, int]]:
    """Return (total, idle) jiffies from the aggregate ``cpu`` line of /proc/stat."""
    text = _read_text(os.path.join(proc_root, "stat"))
    if text is None:
        return None
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            return _parse_cpu_fields(fields[1:])
    return None


def _parse_cpu_fields(fields: List[str]) -> Optional[Tuple[int, int]]:
    try:
        values = [int(v) for v in fields]
    except ValueError:
        return None
    if len(values) < 4:
        return None
    # guest and guest_nice (fields 9-10) are already counted in user and nice: summing them would count
    # virtual-machine time twice.
    total = sum(values[:8])
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return total, idle


class CpuSampler:
    """Overall CPU busy percent between successive calls, without ever sleeping.

    Keep one instance for the life of the agent: each ``sample()`` measures the interval since the previous
    one, so the control server's polling period is the measuring window.
    """

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self.cpu_count: Optional[int] = os.cpu_count()
        # A zero baseline makes the first sample the average since boot, which is better than no value.
        self._prev: Tuple[int, int] = (0, 0)
        self._last: Optional[float] = None
        # get_status may be served from several threads at once; interleaved updates would corrupt the window.
        self._lock = threading.Lock()

    def sample(self) -> Optional[float]:
        totals = _read_stat_totals(self.proc_root)
        if totals is None:
            return None
        with self._lock:
            return self._update(totals)

    def _update(self, totals: Tuple[int, int]) -> Optional[float]:
        total, idle = totals
        d_total = total - self._prev[0]
        d_idle = idle - self._prev[1]
        if d_total < 0:
            # Counters went backwards (CPU taken offline, checkpoint/restore): restart the window from here.
            self._prev = totals
            return self._last
        if d_total == 0:
            # Called again within one clock tick: keep the old baseline so the next window is long enough.
            return self._last
        self._prev = totals
        busy = min(max(d_total - d_idle, 0), d_total)
        self._last = round(busy * 100.0 / d_total, 1)
        return self._last


def load_average(proc_root: str = "/proc") -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages."""
    text = _read_text(os.path.join(proc_root, "loadavg"))
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split()[:3]]
    except ValueError:
        return None
    return values if len(values) == 3 else None


def _parse_meminfo(text: str) -> Dict[str, int]:
    """Map each /proc/meminfo key to its value in bytes; lines that do not parse are skipped."""
    result: Dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        # Every sized field is in kB; the few unitless ones (HugePages_Total ...) are counts.
        result[key.strip()] = value * _KIB if len(parts) > 1 and parts[1].lower() == "kb" else value
    return result


def _available_bytes(info: Dict[str, int]) -> int:
    if "MemAvailable" in info:
        return info["MemAvailable"]
    # Kernels before 3.14 lack MemAvailable; free + page cache is the estimate `free` used back then.
    return info.get("MemFree", 0) + info.get("Buffers", 0) + info.get("Cached", 0)


def memory(proc_root: str = "/proc") -> Optional[Dict[str, Union[int, float]]]:
    """RAM and swap usage in bytes, plus the used RAM percent."""
    text = _read_text(os.path.join(proc_root, "meminfo"))
    if text is None:
        return None
    info = _parse_meminfo(text)
    total = info.get("MemTotal", 0)
    if total <= 0:
        return None
    # Emulated meminfo (lxcfs, gVisor) can report more available than total; never show negative usage.
    used = min(max(total - _available_bytes(info), 0), total)
    # Linux always prints the swap lines, even without swap support; absent means no swap to report.
    swap_total = info.get("SwapTotal", 0)
    swap_used = max(swap_total - info.get("SwapFree", swap_total), 0)
    return {
        "total": total,
        "available": total - used,
        "used": used,
        "percent": round(used * 100.0 / total, 1),
        "swap_total": swap_total,
        "swap_used": swap_used,
    }


def _unescape_mount_field(field: bytes) -> bytes:
    return _MOUNT_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field)


def _parse_mounts(data: bytes) -> List[Tuple[bytes, bytes, str]]:
    """(device, mount point, fstype) for each well-formed line of a mounts file."""
    entries: List[Tuple[bytes, bytes, str]] = []
    for line in data.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        device, mount = (_unescape_mount_field(f) for f in fields[:2])
        entries.append((device, mount, fields[2].decode("ascii", "replace")))
    return entries


def _is_real_fstype(fstype: str) -> bool:
    return fstype not in _IGNORED_FSTYPES and not fstype.startswith("cgroup")


def _dedup_key(device: bytes, mount: bytes) -> bytes:
    # A device that names a path (/dev/sda1, host:/export, //server/share) is one filesystem however many
    # times it is bind-mounted. Names like "overlay" or "none" are shared by unrelated filesystems, so those
    # are told apart by mount point instead.
    return device if b"/" in device else b"\0" + mount


def _disk_usage(device: bytes, mount: bytes, fstype: str) -> Optional[Dict[str, object]]:
    try:
        st = os.statvfs(mount)
    except OSError:
        return None
    total = st.f_blocks * st.f_frsize
    if total <= 0:
        # Zero-sized filesystems are pseudo ones that the fstype list does not know about (fuse.lxcfs ...).
        return None
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    free = st.f_bavail * st.f_frsize
    # Like df, measure against what unprivileged users can use: root-reserved blocks count as neither.
    usable = used + free
    return {
        "mount": mount.decode("utf-8", "replace"),
        "device": device.decode("utf-8", "replace"),
        "fstype": fstype,
        "total": total,
        "used": used,
        "free": free,
        "percent": round(used * 100.0 / usable, 1) if usable > 0 else 0.0,
    }


def disks(mounts_file: str = "/proc/self/mounts") -> List[Dict[str, object]]:
    """Usage of each real mounted filesystem, once per device.

    statvfs on a hard-mounted network filesystem whose server is gone blocks without limit; callers that
    must answer in bounded time should run this in a worker thread.
    """
    try:
        with open(mounts_file, "rb") as f:
            data = f.read()
    except OSError:
        return []
    result: List[Dict[str, object]] = []
    seen: Set[bytes] = set()
    for device, mount, fstype in _parse_mounts(data):
        key = _dedup_key(device, mount)
        if not _is_real_fstype(fstype) or key in seen:
            continue
        usage = _disk_usage(device, mount, fstype)
        if usage is not None:
            seen.add(key)
            result.append(usage)
    return result


def system_uptime(proc_root: str = "/proc") -> Optional[float]:
    """Seconds since boot."""
    text = _read_text(os.path.join(proc_root, "uptime"))
    if not text or not text.split():
        return None
    try:
        return float(text.split()[0])
    except ValueError:
        return None


def _parse_os_release(text: str) -> Dict[str, str]:
    result: Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        key, sep, value = line.partition("=")
        if not sep or line.startswith("#") or not key.isidentifier():
            continue
        result[key] = _unquote(value)
    return result


def _unquote(value: str) -> str:
    try:
        return " ".join(shlex.split(value))
    except ValueError:
        # Unbalanced quotes: a best-effort value beats dropping the key.
        return value.strip("\"'")


def os_release(path: str = "/etc/os-release", fallback: str = "/usr/lib/os-release") -> Dict[str, str]:
    """Key/value pairs of os-release(5), e.g. ID, VERSION_ID, PRETTY_NAME; empty when neither file exists."""
    for candidate in (path, fallback):
        text = _read_text(candidate)
        if text is not None:
            return _parse_os_release(text)
    return {}


def _os_info() -> Dict[str, object]:
    release = os_release()
    return {
        "name": platform.system(),
        "id": release.get("ID"),
        "version_id": release.get("VERSION_ID"),
        "pretty_name": release.get("PRETTY_NAME"),
    }


def collect_status(sampler: CpuSampler, proc_root: str = "/proc") -> Dict[str, object]:
    """The host part of ``get_status``: identity, OS, CPU, load, memory, disks and uptime."""
    return {
        "hostname": socket.gethostname(),
        "os": _os_info(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": sampler.cpu_count,
        "cpu_percent": sampler.sample(),
        "load": load_average(proc_root),
        "memory": memory(proc_root),
        "disks": disks(os.path.join(proc_root, "self", "mounts")),
        "system_uptime": system_uptime(proc_root),
    }
