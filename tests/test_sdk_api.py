"""The SDK's public names: changing this list is changing the public API."""

from __future__ import annotations

import inspect

import liveclass.sdk as sdk

# Names the lead adds from sdk/admin.py and sdk/media/ join this list then.
PUBLIC = {
    "AdminAPIError",
    "AdminClient",
    "BadToken",
    "ChatConfirmed",
    "ChatDeleted",
    "ChatMessage",
    "ChatMuted",
    "ChatSettings",
    "ClassEnded",
    "ClassEndedEvent",
    "ClassEvent",
    "ClassFull",
    "ClassState",
    "Classroom",
    "ClassroomClosed",
    "ConnectionLost",
    "Draining",
    "EdgeFull",
    "ErrorEvent",
    "HandCalled",
    "HandEntry",
    "HandLowered",
    "HandRaised",
    "InvalidMessage",
    "JoinRefused",
    "LeaderboardEntry",
    "LiveclassError",
    "MediaLive",
    "Member",
    "MemberJoined",
    "MemberLeft",
    "MemberRemoved",
    "NoEdgeAvailable",
    "NotAllowed",
    "OriginUnavailable",
    "PollClosed",
    "PollOpened",
    "PollTally",
    "PresenceCount",
    "PresenceList",
    "ProtocolError",
    "QuizAsked",
    "QuizClosed",
    "QuizScore",
    "RecordingReady",
    "Removed",
    "Role",
    "Snapshot",
    "StateReset",
    "TokenExpired",
    "TokenSpec",
    "TryAgainLater",
    "UnknownEvent",
    "VersionUnsupported",
    "Welcome",
    "WrongClass",
    "connect",
}


def test_exported_names() -> None:
    assert set(sdk.__all__) == PUBLIC
    assert len(sdk.__all__) == len(set(sdk.__all__))
    for name in sdk.__all__:
        assert hasattr(sdk, name), name


def test_connect_signature() -> None:
    signature = inspect.signature(sdk.connect)
    assert list(signature.parameters) == [
        "origin_url",
        "token",
        "max_candidates",
        "probe_timeout",
        "reconnect",
        "local_address",
    ]
    keyword_only = [
        name
        for name, param in signature.parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    assert keyword_only == [
        "max_candidates",
        "probe_timeout",
        "reconnect",
        "local_address",
    ]


def test_classroom_methods() -> None:
    for name in (
        "send_chat delete_chat mute set_slow_mode set_chat_enabled remove_member "
        "raise_hand lower_hand call_next_hand open_poll vote close_poll ask_quiz "
        "answer_quiz close_quiz request_presence_list end_class events close"
    ).split():
        assert inspect.iscoroutinefunction(
            getattr(sdk.Classroom, name)
        ) or inspect.isasyncgenfunction(getattr(sdk.Classroom, name)), name


def test_every_public_name_is_documented() -> None:
    for name in sdk.__all__:
        assert inspect.getdoc(getattr(sdk, name)), name


def test_join_refusals_say_whether_to_try_elsewhere() -> None:
    assert issubclass(sdk.EdgeFull, sdk.JoinRefused)
    assert sdk.EdgeFull.retry_elsewhere and sdk.ClassFull.retry_elsewhere
    assert not sdk.BadToken.retry_elsewhere and not sdk.Removed.retry_elsewhere
    assert issubclass(sdk.JoinRefused, sdk.LiveclassError)
