"""Run the demo: servers here, the teacher and the students in child
processes, progress while it runs, a report at the end."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing as mp
import queue
import time
from dataclasses import asdict
from typing import Any

from liveclass.cli.demo import report as checks
from liveclass.cli.demo.plan import DemoOptions
from liveclass.cli.demo.recording import fetch_recording
from liveclass.cli.demo.servers import Servers, start_servers
from liveclass.origin.contract import LogEvent

log = logging.getLogger(__name__)

AUDITOR = "recording-check"
"""A staff member who never joins: its token lets the demo fetch the
recording after the class, when no new token can be minted."""


def say(text: str) -> None:
    """Progress for the person watching: one line, flushed at once."""
    print(text, flush=True)


async def run_demo(options: DemoOptions) -> int:
    """Run the whole demo; return 0 if the report says ok."""
    started = time.monotonic()
    say(
        f"liveclass demo: {options.students} students, {options.duration_s:.0f} s"
        f" class, class log {'Redis' if options.redis_url else 'in process'},"
        f" store {'PostgreSQL' if options.database_url else 'SQLite'}"
    )
    servers = await start_servers(options)
    try:
        say(
            f"origin {servers.origin_url}; edges "
            + ", ".join(f"{k} {v}" for k, v in servers.edge_urls.items())
        )
        result = await _run_class(servers, options)
    finally:
        await servers.stop()
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    text = json.dumps(result, indent=2, default=str)
    if options.report:
        options.report.write_text(text + "\n")
    _summary(result)
    return 0 if result["ok"] else 1


async def _run_class(servers: Servers, options: DemoOptions) -> dict[str, Any]:
    from liveclass.cli.demo import students as students_part
    from liveclass.cli.demo import teacher as teacher_part
    from liveclass.sdk.admin import AdminClient

    async with AdminClient(servers.origin_url, servers.api_key) as admin:
        klass = await admin.create_class(title="Big Buck Bunny, live")
        class_id = klass.id
        await admin.start_class(class_id)
        roster = [
            {"user_id": "teacher", "name": "Teacher", "role": "teacher"},
            {"user_id": AUDITOR, "name": "Recording check", "role": "ta"},
        ]
        roster += [
            {"user_id": f"student-{i:05d}", "name": f"Student {i}", "role": "student"}
            for i in range(options.students)
        ]
        tokens = await admin.mint_tokens(class_id, roster)
    by_user = {t.user_id: t.token for t in tokens}
    auditor = by_user.pop(AUDITOR)
    say(f"class {class_id} created, {len(tokens)} join tokens minted")

    ctx = mp.get_context("spawn")
    results: mp.Queue[tuple[str, Any]] = ctx.Queue()
    go = ctx.Event()
    common = {
        "origin_url": servers.origin_url,
        "class_id": class_id,
        "duration_s": options.duration_s,
        "seed": options.seed,
    }
    teacher = ctx.Process(
        target=teacher_part.main,
        args=({**common, "token": by_user.pop("teacher")}, results, go),
        name="liveclass-demo-teacher",
    )
    students = ctx.Process(
        target=students_part.main,
        args=({**common, "tokens": by_user}, results, go),
        name="liveclass-demo-students",
    )
    teacher.start()
    students.start()
    try:
        outcome = await _follow(results, options, teacher, students)
    finally:
        for proc in (teacher, students):
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    entries = await _read_log(servers, class_id)
    say("checking the recording: origin report, then FFmpeg")
    async with AdminClient(servers.origin_url, servers.api_key) as admin:
        outcome["recording"] = await fetch_recording(admin, class_id, auditor, entries)
    entries = await _read_log(servers, class_id)
    return _report(options, class_id, outcome, entries)


async def _follow(
    results: mp.Queue[tuple[str, Any]],
    options: DemoOptions,
    *procs: mp.process.BaseProcess,
) -> dict[str, Any]:
    """Collect the children's messages, printing progress as it comes."""
    outcome: dict[str, Any] = {}
    deadline = time.monotonic() + options.duration_s + 150
    loop = asyncio.get_running_loop()
    while {"teacher", "students"} - outcome.keys():
        if time.monotonic() > deadline:
            raise RuntimeError("the demo's class did not finish in time")
        try:
            kind, payload = await loop.run_in_executor(None, results.get, True, 1.0)
        except queue.Empty:
            dead = [p.name for p in procs if not p.is_alive() and p.exitcode]
            if dead:
                raise RuntimeError(f"demo process failed: {', '.join(dead)}") from None
            continue
        if kind == "progress":
            say(payload)
        else:
            outcome[kind] = payload
    return outcome


async def _read_log(servers: Servers, class_id: str) -> list[LogEvent]:
    entries: list[LogEvent] = []
    while True:
        batch = await servers.class_log.read(class_id, len(entries), 10_000)
        if not batch:
            return entries
        entries.extend(batch)


def _report(
    options: DemoOptions,
    class_id: str,
    outcome: dict[str, Any],
    entries: list[LogEvent],
) -> dict[str, Any]:
    teacher = outcome["teacher"]
    students = [checks.StudentResult(**s) for s in outcome["students"]]
    joined = [s for s in students if s.joined]
    per_edge: dict[str, int] = {}
    for s in joined:
        per_edge[s.edge_id] = per_edge.get(s.edge_id, 0) + 1
    complete, chat_problems = checks.chat_delivery(students, entries)
    chat_sent = sum(len(s.chat_sent) for s in students)
    poll = teacher.get("poll") or {}
    matches = checks.poll_matches(
        students, poll.get("closed"), len(poll.get("options", []))
    )
    renditions = teacher.get("renditions", [])
    segments = sum(s.hls.get("segments_played", 0) for s in students)
    stalls = sum(s.hls.get("stalls", 0) for s in students)
    recording = outcome["recording"]
    duration = float(recording.get("duration_s") or 0.0)
    decode = recording.get("decodes", {})
    report = {
        "class_id": class_id,
        "students": {
            "planned": options.students,
            "joined": len(joined),
            "per_edge": per_edge,
            "failed": [f"{s.user_id}: {s.error}" for s in students if s.error][:10],
            "reconnects": sum(s.reconnects for s in students),
        },
        "chat": {
            "sent": chat_sent,
            "in_log": sum(1 for e in entries if e.type == "chat.message"),
            "all_sent_logged_once": checks.sent_chat_logged(students, entries),
            "delivered_complete": complete,
            "problems": chat_problems[:10],
        },
        "poll": {
            "votes": sum(s.votes_cast for s in students),
            "voters": sum(1 for s in students if s.vote is not None),
            "final_tally": (poll.get("closed") or {}).get("counts"),
            "matches": matches,
        },
        "quiz": {
            "answers": sum(1 for s in students if s.answered),
            "leaderboard_top": teacher.get("leaderboard", [])[:3],
        },
        "hands": teacher.get("hands", {}),
        "hls": {
            "renditions": renditions,
            "segments_played": segments,
            "stalls": stalls,
            "switches": sum(s.hls.get("switches", 0) for s in students),
            "stalled": [
                {"user_id": s.user_id, **s.hls} for s in students if s.hls.get("stalls")
            ][:10],
            "renditions_played": sorted(
                {r for s in students for r in s.hls.get("renditions", [])}
            ),
        },
        "recording": {
            "playlist": recording.get("playlist"),
            "duration_s": duration,
            "decodes": decode,
        },
        "log_entries": len(entries),
    }
    report["ok"] = bool(
        len(joined) == options.students
        and len(per_edge) >= 2
        and complete
        and matches
        and report["quiz"]["answers"] > 0
        and len(renditions) >= 2
        and segments > 0
        and stalls == 0
        and abs(duration - options.duration_s) <= 0.1 * options.duration_s
        and decode.get("ok", False)
    )
    return {"ok": report.pop("ok"), **report}


def _summary(result: dict[str, Any]) -> None:
    s, c, p, h, r = (
        result[k] for k in ("students", "chat", "poll", "hls", "recording")
    )
    say("")
    say(f"joined      {s['joined']}/{s['planned']} per edge {s['per_edge']}")
    say(f"chat        {c['sent']} sent, delivered complete: {c['delivered_complete']}")
    say(
        f"poll        {p['votes']} votes, tally {p['final_tally']}, "
        f"matches: {p['matches']}"
    )
    say(f"quiz        {result['quiz']['answers']} answers")
    say(
        f"hls         {len(h['renditions'])} renditions, "
        f"{h['segments_played']} segments played, {h['stalls']} stalls"
    )
    say(f"recording   {r['duration_s']:.1f} s, {r['playlist']}")
    say(f"ok          {result['ok']}  ({result['elapsed_s']} s)")


def as_dict(obj: Any) -> Any:
    """A dataclass as a plain dict, for the queue between processes."""
    return asdict(obj)
