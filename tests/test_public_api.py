"""The public surface: everything in ``__all__`` exists, sorted; nothing private leaks."""

import workgen


def test_all_is_sorted_and_complete() -> None:
    assert workgen.__all__ == sorted(workgen.__all__)
    for name in workgen.__all__:
        assert getattr(workgen, name) is not None


def test_every_error_is_a_workgen_error() -> None:
    errors = [getattr(workgen, n) for n in workgen.__all__ if n.endswith(("Error", "Lost",
              "Closed", "Rejected", "Exhausted", "Skipped", "Exceeded", "Found", "Unavailable"))]
    assert errors
    assert all(issubclass(e, workgen.WorkgenError) for e in errors)
