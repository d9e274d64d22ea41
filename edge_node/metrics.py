"""Counters of one edge, rendered in the Prometheus text format (0.0.4)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable


class Metrics:
    """What ``GET /metrics`` reports; gauges are read when rendered."""

    def __init__(self) -> None:
        self.frames_sent = 0
        self.events_appended = 0
        self.send_queue_drops = 0
        self.fanout_rounds = 0
        self.fanout_seconds = 0.0
        self.errors: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()
        self.provisional_chat = 0
        self.handshake_timeouts = 0
        self.members = 0
        """Member connections open, from the join to the socket's end (one
        closed as too slow keeps its socket until it reads or times out):
        kept by :class:`~liveclass.edge_node.node.EdgeNode`."""
        self.classes: Callable[[], int] = lambda: 0
        self.log_backlog: Callable[[], int] = lambda: 0
        self.log_held_classes: Callable[[], int] = lambda: 0
        self.log_append_errors: Callable[[], int] = lambda: 0

    def appended(self, count: int) -> None:
        """Count entries the batcher appended to class logs."""
        self.events_appended += count

    def render(self) -> str:
        """The metrics as Prometheus text."""
        lines = [
            "# HELP liveclass_edge_members Member connections open on this edge.",
            "# TYPE liveclass_edge_members gauge",
            f"liveclass_edge_members {self.members}",
            "# HELP liveclass_edge_classes Classes with a room on this edge.",
            "# TYPE liveclass_edge_classes gauge",
            f"liveclass_edge_classes {self.classes()}",
            "# HELP liveclass_edge_frames_sent_total Frames queued to members.",
            "# TYPE liveclass_edge_frames_sent_total counter",
            f"liveclass_edge_frames_sent_total {self.frames_sent}",
            "# HELP liveclass_edge_events_appended_total Entries appended to logs.",
            "# TYPE liveclass_edge_events_appended_total counter",
            f"liveclass_edge_events_appended_total {self.events_appended}",
            "# HELP liveclass_edge_send_queue_drops_total Members closed as too slow.",
            "# TYPE liveclass_edge_send_queue_drops_total counter",
            f"liveclass_edge_send_queue_drops_total {self.send_queue_drops}",
            "# HELP liveclass_edge_fanout_rounds_total Fan-out rounds completed.",
            "# TYPE liveclass_edge_fanout_rounds_total counter",
            f"liveclass_edge_fanout_rounds_total {self.fanout_rounds}",
            "# HELP liveclass_edge_fanout_seconds_total CPU seconds spent in rounds.",
            "# TYPE liveclass_edge_fanout_seconds_total counter",
            f"liveclass_edge_fanout_seconds_total {self.fanout_seconds:.6f}",
            "# HELP liveclass_edge_log_backlog Entries held for class logs, not "
            "appended yet.",
            "# TYPE liveclass_edge_log_backlog gauge",
            f"liveclass_edge_log_backlog {self.log_backlog()}",
            "# HELP liveclass_edge_log_held_classes Classes whose log is not "
            "answering.",
            "# TYPE liveclass_edge_log_held_classes gauge",
            f"liveclass_edge_log_held_classes {self.log_held_classes()}",
            "# HELP liveclass_edge_log_append_errors_total Appends that failed "
            "(each is retried).",
            "# TYPE liveclass_edge_log_append_errors_total counter",
            f"liveclass_edge_log_append_errors_total {self.log_append_errors()}",
            "# HELP liveclass_edge_provisional_chat_total Chat messages shown to "
            "local members before the log numbered them.",
            "# TYPE liveclass_edge_provisional_chat_total counter",
            f"liveclass_edge_provisional_chat_total {self.provisional_chat}",
            "# HELP liveclass_edge_handshake_timeouts_total Connections cut for "
            "not finishing their request in time.",
            "# TYPE liveclass_edge_handshake_timeouts_total counter",
            f"liveclass_edge_handshake_timeouts_total {self.handshake_timeouts}",
            "# HELP liveclass_edge_errors_total Client messages refused, by code.",
            "# TYPE liveclass_edge_errors_total counter",
        ]
        lines += [
            f'liveclass_edge_errors_total{{code="{code}"}} {n}'
            for code, n in sorted(self.errors.items())
        ]
        lines += [
            "# HELP liveclass_edge_closes_total Connections closed, by close code.",
            "# TYPE liveclass_edge_closes_total counter",
        ]
        lines += [
            f'liveclass_edge_closes_total{{code="{code}"}} {n}'
            for code, n in sorted(self.closes.items())
        ]
        return "\n".join(lines) + "\n"
