"""Tests for the run summary, the progress display and the plain event logger."""

from __future__ import annotations

import gc
import io
import re
import logging
import tracemalloc
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from workgen.requestor.display import ProgressDisplay, RunSummary, log_events
from workgen.protocol.pricing import LinearPricing
from workgen.requestor.events import (
    ActivityCreated, ActivityFailed, AgreementCreated, AgreementRejected, AgreementTerminated,
    CommandOutput,
    DebitNoteAccepted, Event, GolemStarted, GolemStopped, InvoiceAccepted, InvoiceRejected,
    JobFinished, JobStarted, PaymentMissing, ScriptFinished, ScriptSent, TaskAccepted, TaskFailed,
    TaskRejected, TaskRetried, TaskStarted,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
P0, P1 = "local-provider-0", "local-provider-1"
JOB = "job-1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def accepted_task(task_id: str, provider: str, t: float, job: str = JOB) -> list[Event]:
    activity = f"act-{provider}"
    return [
        TaskStarted(timestamp=at(t), job_id=job, task_id=task_id, activity_id=activity,
                    provider_name=provider, data=int(task_id)),
        TaskAccepted(timestamp=at(t + 0.1), job_id=job, task_id=task_id, provider_name=provider,
                     result="ok", running_time=0.1),
    ]


def failed_task(task_id: str, data: Any, reason: str, t: float, job: str = JOB) -> list[Event]:
    return [TaskFailed(timestamp=at(t), job_id=job, task_id=task_id, data=data, reason=reason,
                       attempts=1)]


def a_run() -> list[Event]:
    """12 tasks on two providers; task 7 fails three times, one activity is lost."""
    events: list[Event] = [
        GolemStarted(timestamp=at(0), backend="local", budget=Decimal("1")),
        JobStarted(timestamp=at(0.1), job_id=JOB),
        AgreementCreated(timestamp=at(0.2), job_id=JOB, agreement_id="agr-0", provider_id="0x0",
                         provider_name=P0),
        AgreementCreated(timestamp=at(0.2), job_id=JOB, agreement_id="agr-1", provider_id="0x1",
                         provider_name=P1),
        ActivityCreated(timestamp=at(0.3), job_id=JOB, activity_id="act-0", agreement_id="agr-0",
                        provider_name=P0),
        ScriptSent(timestamp=at(0.4), job_id=JOB, activity_id="act-0", batch_id="b-0",
                   commands=({"run": {"entry_point": "/bin/true"}},)),
        ScriptFinished(timestamp=at(0.5), job_id=JOB, activity_id="act-0", batch_id="b-0",
                       success=True),
    ]
    for i in range(12):
        if i != 7:
            events += accepted_task(str(i), P0 if i % 2 == 0 else P1, 1 + i * 0.1)
    reason = "command exited with return code 1"
    for attempt in (1, 2, 3):
        events.append(TaskStarted(timestamp=at(2), job_id=JOB, task_id="7", activity_id="act-1",
                                  provider_name=P1, data="x"))
        events.append(TaskRejected(timestamp=at(2), job_id=JOB, task_id="7", provider_name=P1,
                                   reason=reason, retry=attempt < 3))
        if attempt < 3:
            events.append(TaskRetried(timestamp=at(2), job_id=JOB, task_id="7", attempt=attempt,
                                      reason=reason))
    events += [
        TaskFailed(timestamp=at(2.5), job_id=JOB, task_id="7", data="x", reason=reason,
                   attempts=3),
        ActivityFailed(timestamp=at(2.6), job_id=JOB, activity_id="act-1", provider_name=P1,
                       reason="activity lost"),
        JobFinished(timestamp=at(3), job_id=JOB),
        DebitNoteAccepted(timestamp=at(3.1), agreement_id="agr-0", provider_name=P0,
                          amount=Decimal("0.001")),
        DebitNoteAccepted(timestamp=at(3.2), agreement_id="agr-0", provider_name=P0,
                          amount=Decimal("0.002")),
        InvoiceAccepted(timestamp=at(3.3), agreement_id="agr-0", provider_name=P0,
                        amount=Decimal("0.002")),
        InvoiceAccepted(timestamp=at(3.3), agreement_id="agr-1", provider_name=P1,
                        amount=Decimal("0.00212")),
        GolemStopped(timestamp=at(3.4)),
    ]
    return events


def summarise(events: list[Event]) -> RunSummary:
    summary = RunSummary()
    for event in events:
        summary(event)
    return summary


# -- RunSummary ----------------------------------------------------------------------------

def test_summary_reports_tasks_providers_failures_and_cost() -> None:
    text = summarise(a_run()).render()
    assert text.splitlines() == [
        "workgen: 12 tasks in 3.4s: 11 accepted, 1 failed",
        "  provider          tasks  failures  time         cost",
        "  local-provider-0      6         0  0.6s    0.002 GLM",
        "  local-provider-1      5         4  0.5s  0.00212 GLM",
        "  failed: task 7 (data='x'): command exited with return code 1 (3 attempts)",
        "  results rejected: 3 (command exited with return code 1 x3), retries: 2",
        "  cost: 0.00412 GLM (2 invoices; 0.000375 GLM per task), agreements: 2, activities "
        "failed: 1 (activity lost)",
    ]


def test_summary_counts_are_exposed_as_attributes() -> None:
    summary = summarise(a_run())
    assert (summary.tasks_total, summary.tasks_started, summary.tasks_accepted) == (12, 12, 11)
    assert summary.failed_tasks.count == 1
    assert [f.task_id for f in summary.failed_tasks.first] == ["7"]
    assert summary.rejected_results.reasons == {"command exited with return code 1": 3}
    assert summary.accepted_by_provider == {P0: 6, P1: 5}
    assert summary.providers == [P0, P1]
    assert summary.retries == 2 and summary.scripts == 1 and summary.activities == 1
    assert summary.total_cost == Decimal("0.00412")
    assert summary.unpaid == {}
    assert summary.elapsed == pytest.approx(3.4)


def test_total_cost_is_an_exact_decimal_sum_of_accepted_invoices() -> None:
    events: list[Event] = [
        InvoiceAccepted(agreement_id=f"agr-{i}", provider_name=P0, amount=Decimal("0.1"))
        for i in range(3)
    ]
    events.append(InvoiceRejected(agreement_id="agr-9", provider_name=P1, amount=Decimal("5"),
                                  reason="over budget"))
    summary = summarise(events)
    assert summary.total_cost == Decimal("0.3")
    text = summary.render()
    assert "cost: 0.3 (3 invoices)" in text  # exact, and no currency: no GolemStarted said it
    assert "invoice rejected: 5 from local-provider-1: over budget" in text
    assert summary.cost_by_provider() == {P0: Decimal("0.3")}


def test_money_smaller_than_six_places_is_not_rounded_away() -> None:
    summary = summarise([InvoiceAccepted(agreement_id="a", provider_name=P0,
                                         amount=Decimal("0.000000123"))])
    assert "cost: 0.000000123 (1 invoice)" in summary.render()


def test_debit_notes_not_covered_by_an_invoice_and_missing_payments_are_unpaid() -> None:
    summary = summarise([
        AgreementCreated(job_id=JOB, agreement_id="a0", provider_id="0x0", provider_name=P0),
        AgreementCreated(job_id=JOB, agreement_id="a1", provider_id="0x1", provider_name=P1),
        DebitNoteAccepted(agreement_id="a0", provider_name=P0, amount=Decimal("0.1")),
        DebitNoteAccepted(agreement_id="a0", provider_name=P0, amount=Decimal("0.5")),
        InvoiceAccepted(agreement_id="a0", provider_name=P0, amount=Decimal("0.3")),
        DebitNoteAccepted(agreement_id="a1", provider_name=P1, amount=Decimal("0.25")),
        PaymentMissing(agreement_id="a1", provider_name=P1),
        PaymentMissing(agreement_id="a2", provider_name="far-provider"),
    ])
    assert summary.unpaid == {"a0": Decimal("0.2"), "a1": Decimal("0.25"), "a2": Decimal(0)}
    assert summary.running_cost == Decimal("0.75")
    assert summary.total_cost == Decimal("0.3")
    assert ("  unpaid: 0.45 on 3 agreements: local-provider-0 0.2, "
            "local-provider-1 0.25 (no invoice), far-provider 0 (no invoice)"
            in summary.render())


def test_every_failure_is_listed_up_to_a_cap_then_counted_by_reason() -> None:
    events: list[Event] = []
    for i in range(25):
        events += failed_task(str(i), i, "boom" if i < 22 else "crash", i)
    lines = summarise(events).render().splitlines()
    assert lines[0] == "workgen: 25 tasks in 24.0s: 0 accepted, 25 failed"
    assert sum(line.startswith("  failed: task ") for line in lines) == 20
    assert "  ... and 5 more failed: crash x3, boom x2" in lines


def test_a_long_run_of_failures_keeps_the_first_few_and_counts_the_rest_in_bounded_memory(
) -> None:
    # Every failure with a reason of its own (as an exit code with its output would give): the
    # summary keeps 20 events and 10 reasons per kind, and counts the rest as "other reasons".
    summary = RunSummary()

    def fail(i: int) -> None:
        summary(TaskRejected(timestamp=at(i), job_id=JOB, task_id=str(i), provider_name=P0,
                             reason=f"wrong output {i}", retry=False))
        summary(TaskFailed(timestamp=at(i), job_id=JOB, task_id=str(i), data=i,
                           reason=f"exit code {i}", attempts=1))
        summary(AgreementRejected(job_id=JOB, provider_id=f"0x{i}", provider_name=f"p{i}",
                                  reason=f"offer {i} expired"))
        summary(ActivityFailed(timestamp=at(i), job_id=JOB, activity_id=f"a{i}",
                               provider_name=P0, reason=f"lost {i}"))
        summary(InvoiceRejected(timestamp=at(i), agreement_id=f"agr-{i}", provider_name=P0,
                                amount=Decimal(1), reason=f"overcharged {i}"))

    tracemalloc.start()
    try:
        for i in range(1000):
            fail(i)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000, 6000):
            fail(i)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert growth < 20_000, f"the summary grew {growth} bytes over 5000 failures of each kind"

    failed = summary.failed_tasks
    assert failed.count == 6000 and len(failed.first) == 20
    assert [f.task_id for f in failed.first] == [str(i) for i in range(20)]
    assert len(failed.reasons) == 11 and failed.reasons["other reasons"] == 5990
    assert summary.rejected_results.count == 6000
    assert summary.agreements_rejected.count == summary.activities_failed.count == 6000
    lines = summary.render().splitlines()
    assert lines[0].endswith(": 0 accepted, 6000 failed")
    assert sum(line.startswith("  failed: task ") for line in lines) == 20
    assert "  ... and 5980 more failed: other reasons x5980" in lines
    assert sum(line.startswith("  invoice rejected: ") for line in lines) == 20
    assert "  ... and 5980 more invoices rejected: other reasons x5980" in lines
    rejected = next(line for line in lines if line.startswith("  results rejected: 6000 ("))
    assert "wrong output 9, other reasons x5990" in rejected
    assert "(6000 rejected: " in summary.render() and "other reasons x5990" in summary.render()
    assert len(summary.render()) < 12_000


def test_failure_line_shortens_data_and_marks_a_cut_reason() -> None:
    reason = "command exited with return code 2\nTraceback (most recent call last): ..."
    text = summarise(failed_task("3", "y" * 500, reason, 0)).render()
    line = next(line for line in text.splitlines() if "failed: task 3" in line)
    assert "command exited with return code 2 ..." in line
    assert "Traceback" not in line
    assert len(line) < 200


def test_unfinished_tasks_and_early_job_ends_are_reported() -> None:
    events: list[Event] = [JobStarted(timestamp=at(0), job_id=JOB)]
    events += accepted_task("1", P0, 1)
    events.append(TaskStarted(timestamp=at(2), job_id=JOB, task_id="2", activity_id="a",
                              provider_name=P0, data=2))
    events.append(JobFinished(timestamp=at(3), job_id=JOB, error="timeout after 3s"))
    lines = summarise(events).render().splitlines()
    assert lines[0] == "workgen: 2 tasks in 3.0s: 1 accepted, 0 failed, 1 unfinished"
    assert "  job job-1 ended early: timeout after 3s" in lines


def test_tasks_of_several_jobs_are_named_with_their_job() -> None:
    events = failed_task("1", "a", "boom", 0, job="job-a") + failed_task("1", "b", "boom", 1,
                                                                       job="job-b")
    text = summarise(events).render()
    assert "failed: task job-a/1 (data='a')" in text
    assert "failed: task job-b/1 (data='b')" in text


def test_a_repeated_outcome_is_counted_once() -> None:
    summary = summarise(accepted_task("1", P0, 0) + accepted_task("1", P0, 1))
    assert summary.tasks_accepted == 1
    assert summary.accepted_by_provider == {P0: 1}


def test_rejected_agreements_are_grouped_by_reason() -> None:
    events: list[Event] = [
        AgreementRejected(job_id=JOB, provider_id=f"0x{i}", provider_name=f"p{i}",
                          reason="busy") for i in range(3)
    ]
    assert "agreements: 0 (3 rejected: busy x3)" in summarise(events).render()


def test_no_tasks_still_gives_a_report() -> None:
    text = summarise([GolemStarted(timestamp=at(0), backend="local", budget=Decimal(1)),
                      GolemStopped(timestamp=at(0.5))]).render()
    assert text.splitlines() == ["workgen: no tasks in 0.5s",
                                 "  cost: 0 GLM (0 invoices), agreements: 0"]


# -- ProgressDisplay -----------------------------------------------------------------------

class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(text: str) -> list[str]:
    """What a terminal shows after ``text``: the few codes the display uses (carriage return,
    newline, erase line, cursor up, erase to the end of the screen), applied to a grid of
    lines. Any other escape code fails the test."""
    lines, row, col = [""], 0, 0
    i = 0
    while i < len(text):
        match = re.match(r"\x1b\[(\d*)([AJK])", text[i:])
        if match:
            count, code = int(match.group(1) or 1), match.group(2)
            if code == "A":
                row = max(0, row - count)
            elif code == "J":
                lines[row] = lines[row][:col]
                del lines[row + 1:]
            else:  # 2K: the whole line
                lines[row] = ""
            i += match.end()
            continue
        char = text[i]
        assert char != "\x1b", f"unexpected escape code at {text[i:i + 8]!r}"
        if char == "\r":
            col = 0
        elif char == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + char + line[col + 1:]
            col += 1
        i += 1
    return lines


def feed(consumer: ProgressDisplay, events: list[Event]) -> None:
    for event in events:
        consumer(event)


def test_live_defaults_to_whether_the_stream_is_a_terminal() -> None:
    assert ProgressDisplay(io.StringIO()).live is False
    assert ProgressDisplay(FakeTerminal()).live is True
    assert ProgressDisplay(FakeTerminal(), live=False).live is False


def test_not_live_logs_important_events_and_writes_only_the_summary(
        caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    progress = ProgressDisplay(stream, live=False)
    caplog.set_level(logging.INFO, logger="workgen")
    run = a_run()
    feed(progress, run[:-1])
    assert stream.getvalue() == ""
    progress(run[-1])
    out = stream.getvalue()
    assert out == progress.summary.render() + "\n"
    assert "\x1b" not in out and "\r" not in out
    logged = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ("workgen", logging.WARNING, "task 7 failed after 3 attempts: command exited with "
            "return code 1 (data='x')") in logged
    assert ("workgen", logging.WARNING, "activity act-1 on local-provider-1 failed: "
            "activity lost") in logged
    assert ("workgen", logging.INFO, "job job-1 finished") in logged


def test_live_keeps_one_status_line_and_prints_events_above_it(
        caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    progress = ProgressDisplay(stream, live=True)
    caplog.set_level(logging.DEBUG, logger="workgen")
    run = a_run()
    feed(progress, run[:-1])
    out = stream.getvalue()
    shown = screen(out)
    # Events above, printed once each; then a line per provider still at work, then the status.
    assert shown[0] == "task 7 will be tried again (attempt 2): command exited with return code 1"
    assert shown[2].startswith("task 7 failed after 3 attempts")
    assert shown[3] == "activity act-1 on local-provider-1 failed: activity lost"
    status = shown[-1]
    assert status.startswith("[job-1] ") or status.startswith("[workgen] ")
    assert "12 done · " in status and "/s · 1 failed · 2 providers · cost 0 GLM · " in status
    assert shown[-3].startswith("  local-provider-0: between tasks (")
    assert shown[-3].endswith(" · 6 done")
    assert shown[-2].startswith("  local-provider-1: failed (")
    assert shown[-2].endswith(" · 5 done · 4 failed")
    assert shown[4] == "job job-1 finished"
    assert len(shown) == 8  # nothing drawn twice, nothing left over
    progress(run[-1])
    assert screen(stream.getvalue()) == shown[:5] + progress.summary.render().splitlines() + [""]
    assert not [r for r in caplog.records if r.name == "workgen"]  # printed, not logged


def test_live_status_redraws_at_most_ten_times_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    stream = io.StringIO()
    progress = ProgressDisplay(stream, live=True)
    for i in range(50):
        feed(progress, accepted_task(str(i), P0, i))
    assert stream.getvalue().count("\r") == 1
    clock[0] += 0.05
    feed(progress, accepted_task("50", P0, 50))
    assert stream.getvalue().count("\r") == 1
    clock[0] += 0.1
    feed(progress, accepted_task("51", P0, 51))
    assert stream.getvalue().count("\r") == 2
    # Task 51's start was drawn; its acceptance, 0 s later, waits for the next event.
    assert stream.getvalue().endswith(
        "[workgen] 51 done · 340.0/s · 1 provider · cost 0 · 0.1s")


def test_status_shows_the_total_when_the_job_announces_it() -> None:
    clock = [100.0]
    stream = io.StringIO()
    progress = ProgressDisplay(stream, live=True)
    progress._width = lambda: 200  # type: ignore[method-assign]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "monotonic", lambda: clock[0])
        progress(JobStarted(job_id=JOB, tasks_total=100))
        clock[0] += 2.0
        feed(progress, failed_task("1", 1, "boom", 0))  # printed above: forces a redraw
        for i in range(2, 26):
            feed(progress, accepted_task(str(i), P0, i))
        clock[0] += 3.0
        progress(GolemStarted(backend="local", budget=Decimal(1), currency="tGLM"))
        progress(InvoiceAccepted(agreement_id="a", provider_name=P0,
                                 amount=Decimal("0.0000530637")))
        feed(progress, failed_task("26", 26, "boom", 0))
    # A quarter done in 5 s: 5 a second, 15 s to go; the cost in 3 significant digits.
    assert stream.getvalue().endswith(
        "[job-1] █████░░░░░░░░░░░░░░░ 26/100 tasks · 5.2/s · ETA 14.2s · 2 failed · "
        "1 provider · cost 0.0000531 tGLM · 0.0s")


def test_command_output_is_written_line_by_line_with_the_provider_name() -> None:
    stream = io.StringIO()
    progress = ProgressDisplay(stream, live=False)

    def out(chunk: str | bytes, stream_name: str = "stdout", index: int = 0) -> CommandOutput:
        return CommandOutput(activity_id="act-0", provider_name=P0, index=index,
                             stream=stream_name, output=chunk)

    e_acute = "é".encode()
    feed(progress, [out("hel"), out("lo\r\nwor"), out(b"caf" + e_acute[:1], index=1),
                    out(e_acute[1:] + b"\n", index=1), out("oops\n", "stderr")])
    assert stream.getvalue() == ("[local-provider-0] hello\n[local-provider-0] café\n"
                                 "[local-provider-0] oops\n")
    progress(ScriptFinished(job_id=JOB, activity_id="act-0", batch_id="b", success=True))
    assert stream.getvalue().endswith("[local-provider-0] wor\n")
    assert "\x1b" not in stream.getvalue()


def test_live_command_output_goes_above_the_status_line() -> None:
    stream = io.StringIO()
    progress = ProgressDisplay(stream, live=True)
    progress(JobStarted(job_id=JOB))
    progress(CommandOutput(activity_id="a", provider_name=P1, index=0, stream="stdout",
                           output=b"hello\n"))
    assert "\r\x1b[2K[local-provider-1] hello\n" in stream.getvalue()


def test_partial_output_is_flushed_when_the_run_stops() -> None:
    stream = io.StringIO()
    progress = ProgressDisplay(stream, live=False)
    progress(CommandOutput(activity_id="a", provider_name=P1, index=0, stream="stdout",
                           output="no newline"))
    progress(GolemStopped())
    assert stream.getvalue().startswith("[local-provider-1] no newline\nworkgen: no tasks")


def test_unknown_events_are_ignored() -> None:
    @dataclass(frozen=True, kw_only=True)
    class SomethingNew(Event):
        detail: str

    stream = io.StringIO()
    progress = ProgressDisplay(stream, live=False)
    progress(SomethingNew(detail="?"))
    assert stream.getvalue() == ""
    assert progress.summary.tasks_total == 0


def test_a_broken_stream_never_raises_into_the_run(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    progress = ProgressDisplay(stream, live=True)
    stream.close()
    for event in a_run():
        progress(event)
    warnings = [r for r in caplog.records if r.getMessage() == "progress display failed"]
    assert len(warnings) == 1
    assert progress.summary.tasks_accepted == 11


def test_odd_event_values_never_raise(caplog: pytest.LogCaptureFixture) -> None:
    class BadRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    stream = io.StringIO()
    progress = ProgressDisplay(stream, live=False)
    bad_amount: Any = None
    progress(InvoiceAccepted(agreement_id="a", provider_name=P0, amount=bad_amount))
    progress(TaskFailed(job_id=JOB, task_id="1", data=BadRepr(), reason="", attempts=0))
    progress(GolemStopped())
    assert "run summary could not record InvoiceAccepted" in caplog.messages
    assert "failed: task 1 (data=<BadRepr instance at " in stream.getvalue()
    assert "): no reason given (0 attempts)" in stream.getvalue()


# -- log_events ----------------------------------------------------------------------------

def test_log_events_logs_each_event_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="workgen.events")
    event = JobStarted(timestamp=at(0), job_id=JOB)
    log_events(event)
    [record] = caplog.records
    assert (record.name, record.levelno) == ("workgen.events", logging.DEBUG)
    assert record.getMessage() == repr(event)


def test_service_instances_are_summarised_with_their_states_and_failures() -> None:
    from workgen.requestor.events import ServiceStateChanged

    summary = RunSummary()

    def state(instance: str, value: str, provider: str | None = None,
              reason: str | None = None) -> None:
        summary(ServiceStateChanged(cluster_id="c", instance_id=instance, service="Web",
                                    state=value, provider_name=provider, reason=reason))

    for instance, provider in (("1", "p0"), ("2", "p1")):
        state(instance, "pending")
        state(instance, "starting", provider)
        state(instance, "running", provider)
    state("1", "stopping", "p0", "stopped by the requestor")
    state("1", "terminated", "p0", "stopped by the requestor")
    state("2", "unresponsive", "p1", "activity a2 broke")
    text = summary.render()
    head, *rest = text.splitlines()
    assert head.startswith("workgen: 2 service instances in ")
    assert head.endswith(": 1 terminated, 1 unresponsive")
    assert "  p0            0         0  0.0s     0          1" in rest
    assert any("service instance 2 (Web) on p1: unresponsive, activity a2 broke" in line
               for line in rest)


def test_live_status_line_shows_service_instances_by_state() -> None:
    from workgen.requestor.events import ServiceStateChanged

    stream = io.StringIO()
    progress = ProgressDisplay(stream, live=True)
    for instance, state in (("1", "pending"), ("2", "pending"), ("1", "starting"),
                            ("1", "running")):
        progress(ServiceStateChanged(cluster_id="c", instance_id=instance, service="Web",
                                     state=state, provider_name="p0"))
        progress._last_draw = 0.0  # every change drawn, whatever the clock says
    note, provider, last = screen(stream.getvalue())
    assert note == "service instance 1 (Web) running on p0"
    assert last.startswith("[workgen] services: 1 pending, 1 running · 1 provider")
    assert provider == "  p0: instance 1 running (0.0s) · 0 done"


def test_providers_at_work_get_a_live_line_each_until_their_agreement_ends() -> None:
    clock = [100.0]
    stream = FakeTerminal()
    progress = ProgressDisplay(stream)
    progress._width = lambda: 200  # type: ignore[method-assign]
    names = [f"provider-{i:02d}" for i in range(10)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "monotonic", lambda: clock[0])
        progress(JobStarted(job_id=JOB, tasks_total=20))
        for i, name in enumerate(names):
            progress(AgreementCreated(job_id=JOB, agreement_id=f"a{i}", provider_id=f"0x{i}",
                                      provider_name=name))
        progress(TaskStarted(job_id=JOB, task_id="3", activity_id="x", provider_name=names[0],
                             data=3))
        clock[0] += 2.5
        progress._last_draw = 0.0
        progress(AgreementTerminated(agreement_id="a9", provider_name=names[9], reason="done"))
    *lines, status = screen(stream.getvalue())
    assert lines[0] == "  provider-00: task 3 (2.5s) · 0 done"
    assert lines[1] == "  provider-01: agreed (2.5s) · 0 done"
    # Nine still at work: eight lines and a count, never more lines than that.
    assert len(lines) == 9 and lines[-1] == "  and 1 more provider"
    assert status.startswith("[job-1] ░░░░") and "0/20 tasks" in status


def test_streamed_output_stays_above_the_live_lines() -> None:
    stream = FakeTerminal()
    progress = ProgressDisplay(stream)
    progress(AgreementCreated(job_id=JOB, agreement_id="a", provider_id="0x", provider_name=P0))
    for i in range(3):
        progress(CommandOutput(activity_id="act", provider_name=P0, index=0,
                               stream="stdout", output=f"line {i}\n"))
        progress._last_draw = 0.0
    shown = screen(stream.getvalue())
    assert shown[:3] == [f"[{P0}] line {i}" for i in range(3)]
    assert shown[3].startswith(f"  {P0}: agreed") and shown[4].startswith("[workgen] ")
    assert len(shown) == 5


def test_the_live_cost_is_estimated_from_the_agreed_prices_until_the_provider_bills() -> None:
    clock = [100.0]
    stream = FakeTerminal()
    progress = ProgressDisplay(stream)
    progress._width = lambda: 200  # type: ignore[method-assign]
    pricing = LinearPricing.from_prices({"golem.usage.duration_sec": 0.001,
                                         "golem.usage.cpu_sec": 0.002}, fixed=0.01)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "monotonic", lambda: clock[0])
        progress(GolemStarted(backend="local", budget=Decimal(1), currency="tGLM"))
        progress(AgreementCreated(job_id=JOB, agreement_id="a", provider_id="0x",
                                  provider_name=P0, pricing=pricing))
        clock[0] += 6.0
        progress(TaskStarted(job_id=JOB, task_id="1", activity_id="x", provider_name=P0,
                             data=1))
        clock[0] += 4.0
        progress._last_draw = 0.0
        progress(TaskAccepted(job_id=JOB, task_id="1", provider_name=P0, result=None,
                              running_time=4.0))
        # 0.01 to start, 10 s of time, 4 s of a task as CPU time: 0.028, not yet billed.
        assert "cost ~0.028 tGLM" in screen(stream.getvalue())[-1]
        progress._last_draw = 0.0
        progress(InvoiceAccepted(agreement_id="a", provider_name=P0, amount=Decimal("0.0301")))
        assert "cost 0.0301 tGLM" in screen(stream.getvalue())[-1]
