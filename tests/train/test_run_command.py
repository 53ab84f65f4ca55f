"""A recipe run as a process leaves its process group when it finishes, and only then."""

import pytest
import torch.distributed as dist

from tunekit.errors import USER_ERROR_EXIT_CODE, DataError
from tunekit.recipes.common import run_command


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group, as each rank of a launch has; destroyed afterwards whatever the test did."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_a_finished_run_leaves_its_process_group(process_group):
    assert run_command(lambda: "result") == "result"
    assert not dist.is_initialized()


def test_a_user_error_exits_with_its_code_and_does_not_wait_on_the_group(process_group):
    def bad_data() -> None:
        raise DataError("train.jsonl, row 3: no 'prompt' key")

    with pytest.raises(SystemExit) as exit_info:
        run_command(bad_data)
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    # The other processes may still be inside a collective, where tearing the group down could hang this one;
    # after an error the launcher stops them all instead.
    assert dist.is_initialized()


def test_without_a_process_group_a_run_command_is_just_the_run():
    assert not dist.is_initialized()
    assert run_command(lambda: 3) == 3
