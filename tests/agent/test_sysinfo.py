from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from myx.agent.sysinfo import (
    CpuSampler,
    collect_status,
    disks,
    load_average,
    memory,
    os_release,
    system_uptime,
)

MEMINFO = """\
MemTotal:           1000 kB
MemFree:             100 kB
MemAvailable:        250 kB
Buffers:              50 kB
Cached:              100 kB
SwapTotal:           200 kB
SwapFree:             50 kB
HugePages_Total:       0
"""

STATUS_KEYS = {
    "hostname",
    "os",
    "kernel",
    "arch",
    "python",
    "cpu_count",
    "cpu_percent",
    "load",
    "memory",
    "disks",
    "system_uptime",
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def stat_text(user: int, system: int, idle: int, iowait: int, guest: int = 0) -> str:
    # Same shape as the kernel's: aggregate line, per-CPU lines, then unrelated counters.
    cpu = f"{user} 0 {system} {idle} {iowait} 0 0 0 {guest} 0"
    return f"cpu  {cpu}\ncpu0 {cpu}\nintr 12345 0 0\nctxt 999\nbtime 1700000000\n"


def mount_escape(path: Path) -> str:
    """Escape a path the way the kernel does in /proc/self/mounts."""
    out = str(path).replace("\\", "\\134")
    return out.replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


# --- load average ------------------------------------------------------------------------------------


def test_load_average(tmp_path: Path) -> None:
    write(tmp_path / "loadavg", "0.50 1.25 2.00 3/456 7890\n")
    assert load_average(str(tmp_path)) == [0.5, 1.25, 2.0]


@pytest.mark.parametrize("content", ["", "0.5 garbage 1.0 1/2 3\n", "0.5 1.0\n"])
def test_load_average_odd_file(tmp_path: Path, content: str) -> None:
    write(tmp_path / "loadavg", content)
    assert load_average(str(tmp_path)) is None


def test_load_average_missing(tmp_path: Path) -> None:
    assert load_average(str(tmp_path)) is None


# --- memory ------------------------------------------------------------------------------------------


def test_memory(tmp_path: Path) -> None:
    write(tmp_path / "meminfo", MEMINFO)
    assert memory(str(tmp_path)) == {
        "total": 1000 * 1024,
        "available": 250 * 1024,
        "used": 750 * 1024,
        "percent": 75.0,
        "swap_total": 200 * 1024,
        "swap_used": 150 * 1024,
    }


def test_memory_without_memavailable_uses_free_plus_cache(tmp_path: Path) -> None:
    write(tmp_path / "meminfo", MEMINFO.replace("MemAvailable:        250 kB\n", ""))
    mem = memory(str(tmp_path))
    assert mem is not None
    assert mem["available"] == (100 + 50 + 100) * 1024
    assert mem["percent"] == 75.0


def test_memory_without_swap_lines(tmp_path: Path) -> None:
    write(tmp_path / "meminfo", "MemTotal: 2000 kB\nMemAvailable: 1500 kB\n")
    mem = memory(str(tmp_path))
    assert mem is not None
    assert (mem["swap_total"], mem["swap_used"], mem["percent"]) == (0, 0, 25.0)


def test_memory_available_above_total_is_clamped(tmp_path: Path) -> None:
    write(tmp_path / "meminfo", "MemTotal: 1000 kB\nMemAvailable: 4000 kB\n")
    mem = memory(str(tmp_path))
    assert mem is not None
    assert (mem["used"], mem["available"], mem["percent"]) == (0, 1000 * 1024, 0.0)


@pytest.mark.parametrize("content", ["", "MemTotal: 0 kB\n", "MemTotal: lots\n", "nonsense\n\n:\n"])
def test_memory_odd_file(tmp_path: Path, content: str) -> None:
    write(tmp_path / "meminfo", content)
    assert memory(str(tmp_path)) is None


def test_memory_missing(tmp_path: Path) -> None:
    assert memory(str(tmp_path)) is None


# --- CPU ---------------------------------------------------------------------------------------------


def test_cpu_first_sample_is_average_since_boot(tmp_path: Path) -> None:
    write(tmp_path / "stat", stat_text(user=100, system=100, idle=700, iowait=100))
    assert CpuSampler(str(tmp_path)).sample() == 20.0


def test_cpu_second_sample_uses_deltas(tmp_path: Path) -> None:
    write(tmp_path / "stat", stat_text(user=100, system=100, idle=700, iowait=100))
    sampler = CpuSampler(str(tmp_path))
    sampler.sample()
    # +60 user +40 system +50 idle +50 iowait: 100 busy out of 200.
    write(tmp_path / "stat", stat_text(user=160, system=140, idle=750, iowait=150))
    assert sampler.sample() == 50.0
    # +1 user +2 idle: one third busy, rounded to a tenth.
    write(tmp_path / "stat", stat_text(user=161, system=140, idle=752, iowait=150))
    assert sampler.sample() == 33.3


def test_cpu_guest_time_is_not_counted_twice(tmp_path: Path) -> None:
    # guest time is already part of user time; counting it again would inflate the total.
    write(tmp_path / "stat", stat_text(user=500, system=0, idle=500, iowait=0, guest=400))
    assert CpuSampler(str(tmp_path)).sample() == 50.0


def test_cpu_no_elapsed_ticks_repeats_last_value(tmp_path: Path) -> None:
    write(tmp_path / "stat", stat_text(user=100, system=100, idle=700, iowait=100))
    sampler = CpuSampler(str(tmp_path))
    assert sampler.sample() == 20.0
    assert sampler.sample() == 20.0
    # The baseline was kept, so the next window covers everything since the first sample.
    write(tmp_path / "stat", stat_text(user=200, system=100, idle=700, iowait=100))
    assert sampler.sample() == 100.0


def test_cpu_counters_going_backwards_restart_the_window(tmp_path: Path) -> None:
    write(tmp_path / "stat", stat_text(user=100, system=100, idle=700, iowait=100))
    sampler = CpuSampler(str(tmp_path))
    assert sampler.sample() == 20.0
    write(tmp_path / "stat", stat_text(user=10, system=10, idle=70, iowait=10))
    assert sampler.sample() == 20.0
    write(tmp_path / "stat", stat_text(user=10, system=10, idle=170, iowait=10))
    assert sampler.sample() == 0.0


def test_cpu_missing_file(tmp_path: Path) -> None:
    sampler = CpuSampler(str(tmp_path))
    assert sampler.sample() is None
    assert sampler.cpu_count == os.cpu_count()


@pytest.mark.parametrize("content", ["", "intr 1 2 3\n", "cpu  1 2 x 4\n", "cpu 1 2\n"])
def test_cpu_odd_file(tmp_path: Path, content: str) -> None:
    write(tmp_path / "stat", content)
    assert CpuSampler(str(tmp_path)).sample() is None


def test_cpu_sample_never_sleeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sleep(_: float) -> None:
        raise AssertionError("sample() must not sleep")

    monkeypatch.setattr("time.sleep", no_sleep)
    write(tmp_path / "stat", stat_text(user=1, system=1, idle=1, iowait=1))
    CpuSampler(str(tmp_path)).sample()


# --- uptime ------------------------------------------------------------------------------------------


def test_system_uptime(tmp_path: Path) -> None:
    write(tmp_path / "uptime", "12345.67 2345.00\n")
    assert system_uptime(str(tmp_path)) == 12345.67


@pytest.mark.parametrize("content", ["", "\n", "soon 1.0\n"])
def test_system_uptime_odd_file(tmp_path: Path, content: str) -> None:
    write(tmp_path / "uptime", content)
    assert system_uptime(str(tmp_path)) is None


def test_system_uptime_missing(tmp_path: Path) -> None:
    assert system_uptime(str(tmp_path)) is None


# --- disks -------------------------------------------------------------------------------------------


def test_disks_decodes_escaped_mount_paths(tmp_path: Path) -> None:
    mount = tmp_path / "my disk\tback\\slash"
    mount.mkdir()
    mounts = write(tmp_path / "mounts", f"/dev/sdz1 {mount_escape(mount)} ext4 rw,relatime 0 0\n")
    result = disks(str(mounts))
    assert len(result) == 1
    entry = result[0]
    assert entry["mount"] == str(mount)
    assert (entry["device"], entry["fstype"]) == ("/dev/sdz1", "ext4")
    st = os.statvfs(mount)
    assert entry["total"] == st.f_blocks * st.f_frsize
    assert set(entry) == {"mount", "device", "fstype", "total", "used", "free", "percent"}
    assert isinstance(entry["percent"], float)
    assert 0.0 <= entry["percent"] <= 100.0


def test_disks_filters_pseudo_filesystems_and_duplicates(tmp_path: Path) -> None:
    for name in ("root", "bind", "data", "ov1", "ov2"):
        (tmp_path / name).mkdir()
    lines = [
        f"/dev/sdz1 {tmp_path / 'root'} ext4 rw 0 0",
        f"proc {tmp_path / 'data'} proc rw 0 0",
        f"tmpfs {tmp_path / 'data'} tmpfs rw 0 0",
        f"cgroup2 {tmp_path / 'data'} cgroup2 rw 0 0",
        f"/dev/loop3 {tmp_path / 'data'} squashfs ro 0 0",
        # A bind mount of the same device is the same filesystem.
        f"/dev/sdz1 {tmp_path / 'bind'} ext4 rw 0 0",
        # Containers' root is overlay; unrelated overlays all share the device name "overlay".
        f"overlay {tmp_path / 'ov1'} overlay rw 0 0",
        f"overlay {tmp_path / 'ov2'} overlay rw 0 0",
        # statvfs fails on a path that does not exist: skipped, not raised.
        f"/dev/sdz2 {tmp_path / 'gone'} xfs rw 0 0",
        "truncated line",
        "",
    ]
    mounts = write(tmp_path / "mounts", "\n".join(lines) + "\n")
    result = disks(str(mounts))
    assert [(d["device"], d["mount"]) for d in result] == [
        ("/dev/sdz1", str(tmp_path / "root")),
        ("overlay", str(tmp_path / "ov1")),
        ("overlay", str(tmp_path / "ov2")),
    ]


def test_disks_missing_mounts_file(tmp_path: Path) -> None:
    assert disks(str(tmp_path / "mounts")) == []


def test_disks_skips_zero_sized_filesystems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.statvfs(tmp_path)
    zero = os.statvfs_result((real.f_bsize, real.f_frsize, 0, 0, 0, 0, 0, 0, 0, 255))
    monkeypatch.setattr(os, "statvfs", lambda _path: zero)
    mounts = write(tmp_path / "mounts", f"lxcfs {tmp_path} fuse.lxcfs rw 0 0\n")
    assert disks(str(mounts)) == []


# --- os-release --------------------------------------------------------------------------------------

OS_RELEASE = """\
# comment line
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian \\"GNU\\"/Linux"
VERSION_ID='12'
ID=debian
BROKEN="unterminated
not a key/value line

"""


def test_os_release_shell_quoting(tmp_path: Path) -> None:
    release = os_release(str(write(tmp_path / "os-release", OS_RELEASE)), str(tmp_path / "none"))
    assert release["ID"] == "debian"
    assert release["VERSION_ID"] == "12"
    assert release["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)"
    assert release["NAME"] == 'Debian "GNU"/Linux'
    assert release["BROKEN"] == "unterminated"


def test_os_release_falls_back(tmp_path: Path) -> None:
    fallback = write(tmp_path / "usr-lib-os-release", "ID=alpine\nVERSION_ID=3.20.0\n")
    release = os_release(str(tmp_path / "missing"), str(fallback))
    assert release == {"ID": "alpine", "VERSION_ID": "3.20.0"}


def test_os_release_neither_file(tmp_path: Path) -> None:
    assert os_release(str(tmp_path / "a"), str(tmp_path / "b")) == {}


# --- collect_status ----------------------------------------------------------------------------------


def test_collect_status_from_fixture_proc(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    write(proc / "loadavg", "0.50 1.25 2.00 3/456 7890\n")
    write(proc / "meminfo", MEMINFO)
    write(proc / "stat", stat_text(user=100, system=100, idle=700, iowait=100))
    write(proc / "uptime", "42.5 80.0\n")
    (tmp_path / "disk").mkdir()
    write(proc / "self" / "mounts", f"/dev/sdz1 {tmp_path / 'disk'} ext4 rw 0 0\n")

    status = collect_status(CpuSampler(str(proc)), str(proc))

    assert set(status) == STATUS_KEYS
    assert status["cpu_percent"] == 20.0
    assert status["load"] == [0.5, 1.25, 2.0]
    assert isinstance(status["memory"], dict)
    assert status["memory"]["percent"] == 75.0
    assert status["system_uptime"] == 42.5
    assert isinstance(status["disks"], list)
    assert [d["mount"] for d in status["disks"]] == [str(tmp_path / "disk")]
    assert status["cpu_count"] == os.cpu_count()
    json.dumps(status)


def test_collect_status_empty_proc(tmp_path: Path) -> None:
    status = collect_status(CpuSampler(str(tmp_path)), str(tmp_path))
    assert set(status) == STATUS_KEYS
    for key in ("cpu_percent", "load", "memory", "system_uptime"):
        assert status[key] is None
    assert status["disks"] == []
    assert isinstance(status["hostname"], str)


# --- the real host -----------------------------------------------------------------------------------

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.path.exists("/proc/stat"), reason="needs a Linux /proc"
)


@linux_only
def test_real_proc_smoke() -> None:
    sampler = CpuSampler()
    status = collect_status(sampler)
    assert set(status) == STATUS_KEYS
    json.dumps(status)

    assert isinstance(status["hostname"], str)
    assert status["hostname"]
    assert isinstance(status["os"], dict)
    assert status["os"]["name"] == "Linux"
    assert isinstance(status["python"], str)

    cpu = status["cpu_percent"]
    assert cpu is None or (isinstance(cpu, float) and 0.0 <= cpu <= 100.0)
    second = sampler.sample()
    assert second is None or 0.0 <= second <= 100.0

    load = status["load"]
    if load is not None:
        assert isinstance(load, list)
        assert len(load) == 3
        assert all(isinstance(v, float) and v >= 0 for v in load)

    mem = status["memory"]
    if mem is not None:
        assert isinstance(mem, dict)
        assert mem["total"] > 0
        assert 0 <= mem["used"] <= mem["total"]
        assert mem["used"] + mem["available"] == mem["total"]
        assert 0.0 <= mem["percent"] <= 100.0
        assert 0 <= mem["swap_used"] <= mem["swap_total"]

    assert isinstance(status["disks"], list)
    for disk in status["disks"]:
        assert disk["total"] > 0
        assert 0 <= disk["used"] <= disk["total"]
        assert 0.0 <= disk["percent"] <= 100.0

    uptime = status["system_uptime"]
    assert uptime is None or (isinstance(uptime, float) and uptime > 0)
