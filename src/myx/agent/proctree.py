"""Finding and signalling a command's whole process tree, from /proc.

A command runs in its own process group, which catches most descendants; a descendant that
calls setsid() leaves the group, so the tree is also followed through parent links.  Each pid is
remembered with its start time so a later signal never hits a recycled pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Dict, List, Optional, Set, Tuple

Proc = Tuple[int, int]  # (pid, start time in clock ticks since boot)


def _stat(pid: int, proc_root: str = "/proc") -> Optional[Tuple[int, int, int]]:
    """(ppid, pgid, start time) of *pid*, or None when it is gone."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(fields[1]), int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> Optional[int]:
    st = _stat(pid)
    return st[2] if st else None


def _table() -> Dict[int, Tuple[int, int, int]]:
    table = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return {}
    for name in names:
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                table[int(name)] = st
    return table


def tree(root: int, pgid: int) -> Set[Proc]:
    """Every live process in group *pgid* or descended from *root* (root included)."""
    table = _table()
    children: Dict[int, List[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found = {pid for pid, (_, group, _) in table.items() if group == pgid}
    stack = [root, *found]
    seen: Set[int] = set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        if pid in table:
            found.add(pid)
        stack.extend(children.get(pid, ()))
    return {(pid, table[pid][2]) for pid in found if pid in table}


def signal_tree(procs: Set[Proc], pgid: int, sig: int) -> None:
    """Send *sig* to the group and to each remembered process that is still the same process."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for pid, started in procs:
        if start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def any_alive(procs: Set[Proc], pgid: int) -> bool:
    """True while the group or any remembered process still runs (zombies count as gone)."""
    try:
        os.killpg(pgid, 0)
        group_alive = _group_has_live_member(pgid)
    except (ProcessLookupError, PermissionError):
        group_alive = False
    return group_alive or any(start_time(pid) == started and not _is_zombie(pid) for pid, started in procs)


def _group_has_live_member(pgid: int) -> bool:
    return any(st[1] == pgid and not _is_zombie(pid) for pid, st in _table().items())


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return True
    return raw[raw.rfind(b")") + 2 : raw.rfind(b")") + 3] in (b"Z", b"X")


TERM = signal.SIGTERM
KILL = signal.SIGKILL
