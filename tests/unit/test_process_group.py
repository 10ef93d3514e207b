"""The training group's settings: one process unless all three variables are set, and every
half or wrong set-up refused with one line naming the variable."""

import pytest

from pipeline.errors import PipelineError
from pipeline.training import process_group

GROUP = {"PIPELINE_COORDINATOR": "10.0.0.1:7777", "PIPELINE_NUM_PROCESSES": "4", "PIPELINE_PROCESS_ID": "2"}


def test_no_variables_mean_one_process_and_a_group_of_one_is_one_process():
    assert process_group.from_env({}) is None
    assert process_group.from_env({**GROUP, "PIPELINE_NUM_PROCESSES": "1", "PIPELINE_PROCESS_ID": "0"}) is None


def test_a_group_is_read_with_its_rank_and_heartbeat():
    group = process_group.from_env({**GROUP, "PIPELINE_HEARTBEAT_SECONDS": "12"})
    assert group == process_group.Group("10.0.0.1:7777", 4, 2, 12) and not group.chief
    assert process_group.from_env({**GROUP, "PIPELINE_PROCESS_ID": "0"}).chief
    assert group.describe() == "process 2 of 4 (coordinator 10.0.0.1:7777)"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"PIPELINE_PROCESS_ID": ""}, "PIPELINE_PROCESS_ID not set"),
        ({"PIPELINE_COORDINATOR": "10.0.0.1"}, "expected host:port of process 0"),
        ({"PIPELINE_NUM_PROCESSES": "two"}, "expected a whole number"),
        ({"PIPELINE_NUM_PROCESSES": "0"}, "must be at least 1"),
        ({"PIPELINE_PROCESS_ID": "4"}, "PIPELINE_PROCESS_ID=4 is not below PIPELINE_NUM_PROCESSES=4"),
        ({"PIPELINE_HEARTBEAT_SECONDS": "0"}, "PIPELINE_HEARTBEAT_SECONDS='0': must be at least 1"),
    ],
)
def test_a_wrong_group_is_one_clear_error(change, message):
    with pytest.raises(PipelineError, match=message):
        process_group.from_env({**GROUP, **change})


def test_the_tensorflow_backend_refuses_a_group():
    from pipeline.training import backend

    assert backend.name() == "tensorflow"
    with pytest.raises(PipelineError, match="runs on the JAX backend"):
        backend.configure(0, group=process_group.Group("127.0.0.1:1", 2, 0))
