"""The yagna backend decides in one place whether an activity's failure is ours (we destroyed
it: ``ActivityClosed``) or broken (``ActivityLost``), whatever the call that met it."""

from __future__ import annotations

import pytest

from workgen.backends.base import Activity
from workgen.backends.yagna.backend import _ActivityErrors
from workgen.errors import ActivityClosed, ActivityLost

MINE = Activity(id="a1", agreement_id="g1")
OTHER = Activity(id="a2", agreement_id="g1")


@pytest.mark.parametrize("status, what", [
    (404, None), (410, None), (500, None), (503, None), (None, "the event stream broke"),
])
def test_an_activity_we_destroyed_is_closed_whatever_the_daemon_says(
        status: int | None, what: str | None) -> None:
    errors = _ActivityErrors()
    errors.destroyed(MINE)
    assert isinstance(errors.of(MINE, status, what), ActivityClosed)
    assert isinstance(errors.of(OTHER, status, what), ActivityLost)


@pytest.mark.parametrize("status, text", [
    (404, "gone on its provider"), (410, "gone on its provider"), (500, "broke"),
    (None, "broke"),
])
def test_any_other_failure_is_a_loss_that_says_what_happened(status: int | None,
                                                            text: str) -> None:
    error = _ActivityErrors().of(OTHER, status)
    assert isinstance(error, ActivityLost) and text in str(error)
    assert error.activity_id == OTHER.id


def test_the_record_of_destroyed_activities_stays_bounded() -> None:
    errors = _ActivityErrors()
    for i in range(errors.KEEP + 10):
        errors.destroyed(Activity(id=f"x{i}", agreement_id="g"))
    assert isinstance(errors.of(Activity(id=f"x{errors.KEEP + 9}", agreement_id="g")),
                      ActivityClosed)
    assert isinstance(errors.of(Activity(id="x0", agreement_id="g")), ActivityLost)
