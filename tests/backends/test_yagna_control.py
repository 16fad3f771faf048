"""The yagna backend's direct exe unit calls answer failures as the daemon's REST handlers
would, so its one error map reads both alike (the calls themselves run on the devnet, in
``test_yagna_on_devnet.py``)."""

from __future__ import annotations

import pytest

from workgen.backends.yagna.control import _status


@pytest.mark.parametrize(("error", "status"), [
    ("timeout", 408),
    ({"timeout": None}, 408),
    ({"badRequest": "duplicate batch id"}, 400),
    ({"notFound": "batch_id = x"}, 404),
    ({"forbidden": "no"}, 403),
    ({"service": "Forbidden! Invalid activity id: x"}, 500),
    ({"activity": "the activity ended"}, 500),
    ({"usageLimitExceeded": "x"}, 500),
    ({"badRequest": "x", "notFound": "y"}, 500),  # not one of yagna's shapes
    ("somethingElse", 500),
    (None, 500),
    (42, 500),
    ([], 500),
])
def test_each_exe_unit_error_gets_the_daemon_s_status(error: object, status: int) -> None:
    assert _status(error) == status
