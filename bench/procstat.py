"""What the kernel says about a process: resident memory, CPU time, sockets."""

from __future__ import annotations

import os
import resource

_TICKS = os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    """Resident memory of ``pid`` in KiB (``VmRSS`` of /proc/PID/status); 0 if
    the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds the processes have used, all threads."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the command name, which may itself hold spaces.
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def own_cpu_seconds() -> float:
    """User plus system CPU seconds this process has used, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server may fork workers), found by
    reading every process's parent from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def socket_inodes(pids: list[int]) -> set[int]:
    """The inodes of the sockets the processes hold open."""
    inodes: set[int] = set()
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def tcp_to(remote_port: int) -> dict[int, int]:
    """IPv4 TCP connections to ``remote_port``: socket inode to local port.

    Read from /proc/net/tcp, whose addresses are hexadecimal ``addr:port``;
    with :func:`socket_inodes` it tells which process holds which client
    connection of a server, without asking the server.
    """
    found: dict[int, int] = {}
    with open("/proc/net/tcp") as f:
        next(f)  # the heading
        for line in f:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == remote_port:
                found[int(fields[9])] = int(fields[1].rsplit(":", 1)[1], 16)
    return found
