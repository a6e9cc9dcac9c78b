"""What keeping a result costs the agent (``measure_persist``), as calibration reports it."""

import pytest

from fedsim.real.agent.state import measure_persist


def test_keeping_a_result_is_timed_in_a_scratch_state_directory_that_goes_away(tmp_path):
    # Prepare: an empty directory for the scratch state.
    before = list(tmp_path.iterdir())

    # Execute: three results of 100 kB kept, as three rounds keep their updates.
    cost = measure_persist(100_000, repeats=3, directory=tmp_path)

    # Assert: the write costs the processor something and the wait for the disk is not
    # negative; nothing of the scratch state is left.
    assert cost.cpu_s > 0 and cost.io_s >= 0
    assert cost.cpu_s + cost.io_s < 10
    assert list(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("nbytes", "repeats", "complaint"), [(-1, 3, "nbytes"), (10, 0, "repeats")]
)
def test_a_bad_measurement_request_is_refused(nbytes, repeats, complaint, tmp_path):
    with pytest.raises(ValueError, match=complaint):
        measure_persist(nbytes, repeats=repeats, directory=tmp_path)
