"""The reconciliation benchmark's figures, its table and the goal check."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.redisprobe import LUA, Entry
from bench.report import render

if TYPE_CHECKING:
    from bench.reconcile import Mark


@dataclass(frozen=True)
class Goals:
    """What the poll must achieve."""

    p99_ms: float = 500.0
    """Close to results at every student, 99th percentile."""
    origin_messages_per_vote: float = 0.01
    """Below one message a vote: votes must reach the origin in batches."""


def figures(
    *,
    join: dict[str, Any],
    poll: dict[str, Any],
    before: Mark,
    after: Mark,
    entries: list[Entry],
    origin_poll: dict[str, Any] | None,
    group_seen: bool,
) -> dict[str, Any]:
    """Every measurement of the run as plain data, goals checked."""
    goals = Goals()
    votes = max(1, poll["votes_sent"])
    clients = {**before.clients, **after.clients}
    calls = after.calls - before.calls
    by_process: dict[str, Counter[str]] = {}
    names_by_process: dict[str, Counter[str]] = {}
    origin_calls: Counter[str] = Counter()
    other_classes = 0
    for (client, name, in_class), n in calls.items():
        owner = clients.get(client, "closed connection")
        by_process.setdefault(owner, Counter())[
            "in scripts" if name.startswith(f"{LUA}.") else "commands"
        ] += n
        names_by_process.setdefault(owner, Counter())[name] += n
        if owner == "origin" and not name.startswith(f"{LUA}."):
            origin_calls[name] += n
            other_classes += 0 if in_class else n
    bench = by_process.pop("bench", Counter())

    if group_seen and before.group is not None and after.group is not None:
        entries_read = after.group.entries_read - before.group.entries_read
        read_by = "consumer group entries-read"
    else:
        entries_read = after.head - before.head
        read_by = "entries appended (no consumer group seen)"
    replies = sum(origin_calls.values())
    messages = entries_read + replies
    commands = sum(c["commands"] for c in by_process.values())
    in_scripts = sum(c["in scripts"] for c in by_process.values())

    expected = poll["expected"]
    stored = origin_poll.get("counts") if origin_poll else None
    exact = bool(poll["results_exact"]) and stored == expected
    window_s = after.at - before.at
    cpu = {k: round(after.cpu[k] - before.cpu[k], 2) for k in before.cpu}
    p99 = poll["p99_ms"]
    return {
        "join": join,
        "poll": poll,
        "origin_stored": origin_poll,
        "window_s": round(window_s, 2),
        "origin": {
            "messages": messages,
            "entries_read": entries_read,
            "entries_read_by": read_by,
            "replies": replies,
            "replies_by_command": dict(origin_calls.most_common()),
            "replies_for_other_classes": other_classes,
            "messages_per_vote": round(messages / votes, 4),
            "cpu_s": cpu.get("origin"),
        },
        "redis": {
            "commands": commands,
            "in_scripts": in_scripts,
            "commands_per_vote": round(commands / votes, 4),
            "with_scripts_per_vote": round((commands + in_scripts) / votes, 4),
            "by_process": {k: dict(v) for k, v in sorted(by_process.items())},
            "by_process_and_command": {
                k: dict(v.most_common()) for k, v in sorted(names_by_process.items())
            },
            "info_total_minus_bench": after.commands
            - before.commands
            - sum(bench.values()),
        },
        "log": _log_figures(entries),
        "cpu_s": cpu,
        "generator_cpu_pct": round(100 * cpu["generator"] / window_s, 1),
        "goals": {
            "exact": exact,
            "p99": p99 is not None and p99 < goals.p99_ms,
            "origin_messages": messages / votes < goals.origin_messages_per_vote,
        },
    }


def _log_figures(entries: list[Entry]) -> dict[str, Any]:
    """What the class log gained in the window: entries by type, and the
    vote batches by edge."""
    by_type = Counter(e.type for e in entries)
    batches = [e for e in entries if e.type == "poll.votes"]
    per_edge = Counter(e.edge_id for e in batches)
    votes = sum(e.items for e in batches)
    return {
        "entries": len(entries),
        "by_type": dict(by_type.most_common()),
        "vote_batches_by_edge": dict(sorted(per_edge.items())),
        "votes_in_batches": votes,
        "votes_per_batch": round(votes / len(batches), 1) if batches else None,
    }


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(result: dict[str, Any]) -> str:
    """The figures and the goal check as text."""
    goals = Goals()
    poll, origin, redis = result["poll"], result["origin"], result["redis"]
    met = result["goals"]
    stored = result["origin_stored"] or {}
    rows = [
        ["measure", "value", "goal", "met"],
        [
            "final tally exact (every student, origin)",
            "yes" if met["exact"] else "no",
            "yes",
            _yes(met["exact"]),
        ],
        ["close to results at every student, p50 ms", _ms(poll["p50_ms"]), "", ""],
        [
            "close to results at every student, p99 ms",
            _ms(poll["p99_ms"]),
            f"< {goals.p99_ms:g}",
            _yes(met["p99"]),
        ],
        [
            "origin messages per vote",
            f"{origin['messages_per_vote']:.4f}",
            f"< {goals.origin_messages_per_vote:g}",
            _yes(met["origin_messages"]),
        ],
        [
            "Redis commands per vote (incl. in scripts)",
            f"{redis['commands_per_vote']:.4f} ({redis['with_scripts_per_vote']:.3f})",
            "",
            "",
        ],
        ["origin CPU s", f"{origin['cpu_s']:.2f}", "", ""],
    ]
    log = result["log"]
    cpu = result["cpu_s"]
    lines = [
        "",
        f"poll: {poll['votes_sent']} votes ({poll['first_votes']} first, "
        f"{poll['changed']} changed) sent over {poll['voting_s']} s; "
        f"{poll['moved']} of {poll['moves_planned']} students moved to another "
        f"edge mid-poll (resumed there after p50 {_ms(poll['move_p50_ms'])} ms, "
        f"p99 {_ms(poll['move_p99_ms'])} ms; their votes wait for it); "
        f"window {result['window_s']} s (poll open to origin stored)",
        "",
        render(rows),
        "",
        f"results: {poll['results_received']} of {poll['joined']} students got "
        f"counts {_seen(poll)}; expected {poll['expected']}; "
        f"origin stored {stored.get('counts')} "
        f"({_ms(poll['origin_stored_ms'])} ms after the close); "
        f"max {_ms(poll['max_ms'])} ms",
        f"origin messages: {origin['messages']} = {origin['entries_read']} stream "
        f"entries read + {origin['replies']} replies "
        f"({_pairs(origin['replies_by_command'])})",
        f"log entries in the window: {log['entries']} "
        f"({_pairs(log['by_type'])}); vote batches by edge "
        f"{_pairs(log['vote_batches_by_edge'])}, "
        f"{log['votes_per_batch']} votes each",
        "Redis commands by process (top level + in scripts): "
        + ", ".join(
            f"{name} {c.get('commands', 0)}+{c.get('in scripts', 0)}"
            for name, c in redis["by_process"].items()
        ),
        "CPU s in the window: "
        + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
        + f" (generator {result['generator_cpu_pct']}% of one core)",
        f"checks: seq gaps {poll['seq_gaps']}, state resets {poll['resets']}, "
        f"errors {poll['errors']}, votes held back {poll['votes_held_back']}, "
        f"teacher's tally matched {_ms(poll['teacher_tally_matched_ms'])} ms "
        "after the last vote",
    ]
    return "\n".join(lines)


def _seen(poll: dict[str, Any]) -> str:
    seen = poll["results_seen"]
    return "; ".join(f"[{counts}] x{n}" for counts, n in seen.items()) or "none"


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())
