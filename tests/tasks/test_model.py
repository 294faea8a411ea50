"""The task record, its state machine and its event payloads (SPEC §3 "Tasks"), no I/O."""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import InvalidEvent, TaskFinished
from tidings.events import MAX_JSON_DEPTH
from tidings.tasks.model import (
    SMOOTHING,
    STREAM_END_TYPES,
    TERMINAL_EVENTS,
    Task,
    apply_cancel,
    apply_complete,
    apply_fail,
    apply_file,
    apply_progress,
    deleted_event,
    evolve,
    file_event,
    new_task,
    progress_event,
    record_event_id,
    snapshot_events,
    terminal_event,
    validate_task_id,
)

T0 = 1_700_000_000.0


def running(total: int | None = 10, current: int = 0) -> Task:
    task = new_task("t1", owner="alice", total=total, now=T0)
    return apply_progress(task, current=current, now=T0 + 1)


# -- creation ---------------------------------------------------------------------------


def test_new_task_is_pending_with_its_creation_event_as_sequence_one() -> None:
    task = new_task("job-1", owner="alice", title="Convert", total=4, now=T0)
    assert task.status == "pending"
    assert task.sequence == 1
    assert (task.current, task.total, task.progress) == (0, 4, 0.0)
    assert task.created_at == task.updated_at == T0
    assert task.started_at is None
    assert task.finished_at is None


def test_new_task_gets_a_random_id_when_none_is_given() -> None:
    first, second = new_task(now=T0), new_task(now=T0)
    assert first.task_id != second.task_id
    assert validate_task_id(first.task_id) == first.task_id


@pytest.mark.parametrize("bad", ["", "a/b", "has space", "x" * 129, "é"])
def test_task_ids_are_one_topic_segment(bad: str) -> None:
    with pytest.raises(InvalidEvent):
        new_task(bad, now=T0)


def test_metadata_must_be_an_object() -> None:
    with pytest.raises(InvalidEvent):
        new_task(metadata=[1, 2], now=T0)  # type: ignore[arg-type]  # what a bad caller sends


# -- progress -----------------------------------------------------------------------------


def test_first_progress_moves_pending_to_running() -> None:
    task = new_task("t1", total=10, now=T0)
    after = apply_progress(task, current=3, now=T0 + 5)
    assert after.status == "running"
    assert after.started_at == T0 + 5
    assert after.sequence == task.sequence + 1
    later = apply_progress(after, current=4, now=T0 + 6)
    assert later.started_at == T0 + 5


def test_counts_alone_set_the_percent() -> None:
    task = apply_progress(new_task("t1", total=7, now=T0), current=3, now=T0)
    assert task.progress == round(100 * 3 / 7, 2)


def test_an_explicit_percent_wins_over_counts() -> None:
    task = apply_progress(new_task("t1", total=10, now=T0), current=3, progress=50, now=T0)
    assert task.progress == 50.0
    assert task.current == 3


def test_percent_alone_keeps_the_counts() -> None:
    task = apply_progress(running(current=2), progress=75, now=T0 + 2)
    assert (task.progress, task.current, task.total) == (75.0, 2, 10)


def test_a_new_total_recomputes_the_percent() -> None:
    task = apply_progress(running(current=5), total=20, now=T0 + 2)
    assert task.progress == 25.0


def test_fields_left_out_keep_their_value() -> None:
    task = apply_progress(running(), current=1, message="one", now=T0 + 2)
    task = apply_progress(task, current=2, now=T0 + 3)
    assert task.message == "one"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"current": 11}, "greater than total"),
        ({"total": 1, "current": 2}, "greater than total"),
        ({"progress": 100.5}, "between 0 and 100"),
        ({"progress": -1}, "between 0 and 100"),
        ({"current": -1}, "negative"),
        ({"total": -3}, "negative"),
        ({"current": True}, "number"),
        ({"progress": math.nan}, "finite"),
        ({"current": math.inf}, "finite"),
        ({"total": 10**400}, "finite"),
        ({"message": 5}, "string"),
    ],
)
def test_invalid_progress_is_refused(fields: dict[str, Any], problem: str) -> None:
    task = running(current=5)
    with pytest.raises(InvalidEvent, match=problem) as info:
        apply_progress(task, now=T0 + 2, **fields)
    assert info.value.status == 422


def test_counts_near_the_float_maximum_give_a_finite_percent() -> None:
    """Audit item 4: ``100 * current`` overflowed to infinity, which orjson writes as
    ``null``; the percent is computed as ``100 * (current / total)``."""
    huge = sys.float_info.max
    for current, total in ((1e308, 1e308), (huge, huge), (huge / 2, huge)):
        task = apply_progress(new_task("t1", now=T0), current=current, total=total, now=T0)
        assert task.progress == round(100 * (current / total), 2)
        assert math.isfinite(task.progress)


def test_a_rate_or_eta_that_would_overflow_is_unknown() -> None:
    huge = sys.float_info.max
    start = apply_progress(new_task("t1", total=huge, now=T0), current=0, now=T0)
    jump = apply_progress(start, current=huge, now=T0 + 1e-6)  # huge / a microsecond
    assert (jump.rate, jump.eta) == (None, None)
    numbers = [v for v in dataclasses.asdict(jump.rate_state).values() if isinstance(v, float)]
    assert all(math.isfinite(v) for v in numbers)
    crawl = apply_progress(new_task("t2", total=huge, now=T0), current=0, now=T0)
    crawl = apply_progress(crawl, current=1e-300, now=T0 + 1000)  # the rest takes forever
    assert crawl.rate is not None
    assert crawl.eta is None


def test_lowering_the_total_below_current_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="greater than total"):
        apply_progress(running(current=8), total=5, now=T0 + 2)


def test_counts_without_a_total_leave_the_percent() -> None:
    task = apply_progress(new_task("t1", now=T0), current=40, now=T0)
    assert (task.current, task.total, task.progress) == (40, None, 0.0)


# -- rate and eta (tqdm-style smoothing) -----------------------------------------------------


def test_rate_and_eta_are_exponential_moving_averages_like_tqdm() -> None:
    task = new_task("t1", total=100, now=T0)
    task = apply_progress(task, current=0, now=T0)
    assert task.rate is None
    assert task.eta is None
    task = apply_progress(task, current=10, now=T0 + 1)
    assert task.rate == pytest.approx(10.0)
    assert task.eta == pytest.approx(9.0)
    task = apply_progress(task, current=30, now=T0 + 2)
    beta = 1 - SMOOTHING
    ema_dn = SMOOTHING * 20 + beta * (SMOOTHING * 10)
    ema_dt = SMOOTHING * 1 + beta * (SMOOTHING * 1)
    assert task.rate == pytest.approx(ema_dn / ema_dt, rel=1e-3)
    assert task.eta == pytest.approx(70 / (ema_dn / ema_dt), abs=0.1)


def test_rate_restarts_when_progress_goes_backwards() -> None:
    task = new_task("t1", total=100, now=T0)
    task = apply_progress(task, current=10, now=T0)
    task = apply_progress(task, current=20, now=T0 + 1)
    assert task.rate is not None
    task = apply_progress(task, current=5, now=T0 + 2)
    assert task.rate is None
    assert task.eta is None


def test_rate_uses_percent_points_without_counts() -> None:
    task = new_task("t1", now=T0)
    task = apply_progress(task, progress=10, now=T0)
    task = apply_progress(task, progress=30, now=T0 + 2)
    assert task.rate == pytest.approx(10.0)
    assert task.eta == pytest.approx(7.0)


def test_two_reports_at_the_same_instant_do_not_divide_by_zero() -> None:
    task = new_task("t1", total=100, now=T0)
    task = apply_progress(task, current=10, now=T0)
    task = apply_progress(task, current=20, now=T0)
    assert task.rate is None
    task = apply_progress(task, current=30, now=T0 + 1)
    assert task.rate == pytest.approx(20.0)


# -- files ---------------------------------------------------------------------------------


def test_a_new_file_is_added_with_its_id_as_filename() -> None:
    task = apply_file(new_task("t1", now=T0), "f1", status="processing", now=T0 + 1)
    assert task.status == "running"
    assert task.files["f1"].to_json() == {
        "file_id": "f1",
        "filename": "f1",
        "status": "processing",
        "progress": 0.0,
        "message": None,
    }
    assert task.total_files == 1


def test_total_files_is_the_batch_size_as_in_seed_004() -> None:
    """``data.total_files || data.total`` on seed 004's page: the size of the batch, not
    how many files were reported so far."""
    task = apply_file(new_task("t1", total=5, now=T0), "f1", status="processing", now=T0 + 1)
    assert task.total_files == 5
    for n in range(2, 8):
        task = apply_file(task, f"f{n}", status="pending", now=T0 + n)
    assert task.total_files == 7  # more files than ``total``
    assert new_task("t2", now=T0).total_files is None


def test_a_completed_file_is_at_100_percent_and_keeps_its_filename() -> None:
    task = apply_file(running(), "f1", status="processing", filename="a.png", now=T0 + 2)
    task = apply_file(task, "f1", status="completed", now=T0 + 3)
    assert task.files["f1"].filename == "a.png"
    assert task.files["f1"].progress == 100.0


@pytest.mark.parametrize(
    ("file_id", "fields"),
    [
        ("f1", {"status": "done"}),
        ("f1", {"status": "processing", "progress": 101}),
        ("", {"status": "processing"}),
    ],
)
def test_invalid_file_updates_are_refused(file_id: str, fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent):
        apply_file(running(), file_id, now=T0 + 2, **fields)


# -- terminal states -----------------------------------------------------------------------


def test_complete_sets_progress_to_100_and_the_finish_time() -> None:
    task = apply_complete(running(current=4), result={"n": 4}, now=T0 + 9)
    assert task.status == "completed"
    assert (task.progress, task.eta, task.finished_at) == (100.0, 0.0, T0 + 9)
    assert task.processing_time == 8.0  # from start (T0 + 1), not creation
    assert task.terminal


def test_fail_keeps_error_and_details() -> None:
    task = apply_fail(running(), error="disk full", details={"free": 0}, now=T0 + 2)
    assert (task.status, task.error, task.details) == ("failed", "disk full", {"free": 0})


def test_values_nested_deeper_than_the_limit_are_refused() -> None:
    deep: Any = 0
    for _ in range(MAX_JSON_DEPTH):
        deep = [deep]
    apply_complete(running(), result=deep, now=T0 + 2)  # at the limit: fine
    with pytest.raises(InvalidEvent, match="result nests deeper than 128 levels"):
        apply_complete(running(), result=[deep], now=T0 + 2)
    with pytest.raises(InvalidEvent, match="details nests deeper than 128 levels"):
        apply_fail(running(), error="x", details=[deep], now=T0 + 2)
    with pytest.raises(InvalidEvent, match="metadata nests deeper than 128 levels"):
        new_task(metadata={"a": deep}, now=T0)


def test_fail_needs_an_error_message() -> None:
    with pytest.raises(InvalidEvent):
        apply_fail(running(), error="", now=T0 + 2)


def test_cancel_keeps_its_reason_in_error() -> None:
    task = apply_cancel(running(), reason="user asked", now=T0 + 2)
    assert (task.status, task.error) == ("cancelled", "user asked")


@pytest.mark.parametrize(
    "finish",
    [
        lambda t: apply_complete(t, now=T0 + 5),
        lambda t: apply_fail(t, error="x", now=T0 + 5),
        lambda t: apply_cancel(t, now=T0 + 5),
    ],
)
@pytest.mark.parametrize(
    "later",
    [
        lambda t: apply_progress(t, current=1, now=T0 + 6),
        lambda t: apply_file(t, "f", status="pending", now=T0 + 6),
        lambda t: apply_complete(t, now=T0 + 6),
        lambda t: apply_fail(t, error="y", now=T0 + 6),
        lambda t: apply_cancel(t, now=T0 + 6),
    ],
)
def test_terminal_states_are_final(finish: Any, later: Any) -> None:
    done = finish(running())
    with pytest.raises(TaskFinished) as info:
        later(done)
    assert info.value.status == 409


def test_a_pending_task_may_finish_without_progress() -> None:
    task = apply_complete(new_task("t1", now=T0), now=T0 + 3)
    assert task.status == "completed"
    assert task.processing_time == 3.0


# -- event payloads (SPEC §3, seed 004) --------------------------------------------------


def test_task_progress_payload_has_exactly_the_spec_fields() -> None:
    task = apply_progress(running(), current=3, message="3 of 10", now=T0 + 2)
    kind, data = progress_event(task)
    assert kind == "task_progress"
    assert data == {
        "task_id": "t1",
        "status": "running",
        "progress": 30.0,
        "current": 3,
        "total": 10,
        "total_files": 10,
        "message": "3 of 10",
        "rate": task.rate,
        "eta": task.eta,
        "sequence": task.sequence,
    }


def test_file_update_payload_has_exactly_the_spec_fields() -> None:
    task = apply_file(running(), "f1", status="failed", message="bad header", now=T0 + 2)
    assert file_event(task, "f1") == (
        "file_update",
        {
            "task_id": "t1",
            "file_id": "f1",
            "filename": "f1",
            "status": "failed",
            "progress": 0.0,
            "message": "bad header",
            "sequence": task.sequence,
        },
    )


def test_task_completed_payload_uses_metadata_job_id() -> None:
    task = new_task("t1", metadata={"job_id": "j-9"}, now=T0)
    task = apply_complete(task, result={"ok": True}, now=T0 + 2)
    assert terminal_event(task) == (
        "task_completed",
        {
            "task_id": "t1",
            "job_id": "j-9",
            "result": {"ok": True},
            "processing_time": 2.0,
            "sequence": 2,
        },
    )
    assert terminal_event(apply_complete(running(), now=T0 + 2)).data["job_id"] == "t1"


def test_task_failed_and_cancelled_payloads() -> None:
    failed = apply_fail(running(), error="boom", details={"code": 7}, now=T0 + 2)
    assert terminal_event(failed) == (
        "task_failed",
        {"task_id": "t1", "error": "boom", "details": {"code": 7}, "sequence": 3},
    )
    cancelled = apply_cancel(running(), reason="stop", now=T0 + 2)
    assert terminal_event(cancelled) == (
        "task_cancelled",
        {"task_id": "t1", "reason": "stop", "sequence": 3},
    )
    assert {terminal_event(failed).type, terminal_event(cancelled).type} <= TERMINAL_EVENTS


def test_terminal_event_of_an_unfinished_task_is_an_error() -> None:
    with pytest.raises(ValueError, match="not terminal"):
        terminal_event(running())


def test_deleted_event_ends_streams_and_takes_the_next_sequence() -> None:
    task = running()
    kind, data = deleted_event(task, "expired")
    assert kind in STREAM_END_TYPES
    assert data == {"task_id": "t1", "reason": "expired", "sequence": task.sequence + 1}


def test_snapshot_is_progress_then_each_file_all_at_the_current_sequence() -> None:
    task = apply_file(running(), "a", status="completed", now=T0 + 2)
    task = apply_file(task, "b", status="processing", now=T0 + 3)
    events = snapshot_events(task)
    assert [e.type for e in events] == ["task_progress", "file_update", "file_update"]
    assert [e.data.get("file_id") for e in events[1:]] == ["a", "b"]
    assert {e.data["sequence"] for e in events} == {task.sequence}


def test_snapshot_of_a_finished_task_is_its_terminal_event() -> None:
    task = apply_complete(apply_file(running(), "a", status="completed", now=T0 + 2), now=T0 + 3)
    assert [e.type for e in snapshot_events(task)] == ["task_completed"]


# -- records ----------------------------------------------------------------------------------


def test_record_round_trip_keeps_everything() -> None:
    task = new_task("t1", owner="alice", title="T", total=10, metadata={"k": [1]}, now=T0)
    task = apply_progress(task, current=2, now=T0 + 1)
    task = apply_progress(task, current=4, message="m", now=T0 + 2)
    task = apply_file(task, "f", status="processing", filename="f.png", progress=40, now=T0 + 3)
    task = record_event_id(task, "abcd-17")
    assert Task.from_record(task.to_record()) == task


def test_task_json_hides_internal_fields() -> None:
    data = record_event_id(running(), "abcd-3").to_json()
    assert "last_event_id" not in data
    assert "rate_state" not in data
    assert set(data) == {
        "task_id", "status", "progress", "current", "total", "message", "title", "owner",
        "metadata", "files", "result", "error", "details", "rate", "eta", "created_at",
        "started_at", "updated_at", "finished_at", "sequence",
    }  # fmt: skip


def test_from_record_ignores_unknown_fields() -> None:
    data = running().to_json() | {"added_in_a_later_version": 1}
    assert Task.from_record(data).task_id == "t1"


def test_record_event_id_keeps_the_newest_id() -> None:
    task = record_event_id(running(), "ep-10")
    assert record_event_id(task, "ep-9").last_event_id == "ep-10"
    assert record_event_id(task, "ep-11").last_event_id == "ep-11"
    assert record_event_id(task, "other-1").last_event_id == "other-1"  # a new history


# -- properties --------------------------------------------------------------------------------

_step = st.one_of(
    st.builds(lambda c: {"current": c}, st.integers(-2, 25)),
    st.builds(lambda t: {"total": t}, st.integers(-1, 25)),
    st.builds(lambda p: {"progress": p}, st.floats(-10, 110, allow_nan=False)),
    st.builds(lambda m: {"message": m}, st.text(max_size=5)),
)


@given(st.lists(_step, max_size=30))
def test_any_sequence_of_reports_keeps_the_invariants(steps: list[dict[str, Any]]) -> None:
    """Accepted reports raise ``sequence`` by one; refused ones change nothing; the task
    stays consistent (0 <= progress <= 100, current <= total)."""
    task = new_task("t1", total=10, now=T0)
    for i, fields in enumerate(steps):
        try:
            after = apply_progress(task, now=T0 + i, **fields)
        except InvalidEvent:
            continue
        assert after.sequence == task.sequence + 1
        assert 0.0 <= after.progress <= 100.0
        if after.current is not None and after.total is not None:
            assert after.current <= after.total
        if after.rate is not None:
            assert after.rate >= 0
        task = after


def test_evolve_is_dataclasses_replace() -> None:
    task = running(current=3)
    cases: list[dict[str, Any]] = [
        {},
        {"last_event_id": "ab12cd34-7"},
        {"status": "failed", "error": "e"},
    ]
    for changes in cases:
        assert evolve(task, **changes) == dataclasses.replace(task, **changes)
    assert evolve(task).task_id == "t1"
    with pytest.raises(TypeError, match="no field 'colour'"):
        evolve(task, colour="red")
