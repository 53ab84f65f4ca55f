"""The step contract: a loss's output becomes the runner's (loss_sum, metrics) only if it covers the declared units."""

from __future__ import annotations

import pytest
import torch

from tunekit.losses import LossOutput
from tunekit.train.spec import step_result


def test_step_result_hands_on_the_sum_and_metrics():
    output = LossOutput(torch.tensor(6.0), torch.tensor(3), {"accuracy": torch.tensor(0.5)})
    loss_sum, metrics = step_result(output, {"num_items": torch.tensor(3)})
    assert loss_sum.item() == 6.0 and metrics == {"accuracy": torch.tensor(0.5)}
    assert output.mean().item() == 2.0


def test_a_loss_that_counts_other_units_than_the_batch_declared_is_refused():
    output = LossOutput(torch.tensor(6.0), torch.tensor(3))
    with pytest.raises(RuntimeError, match="covers 3 units but the batch declared num_items=4"):
        step_result(output, {"num_items": torch.tensor(4)})


def test_an_empty_batch_has_a_zero_mean():
    assert LossOutput(torch.tensor(0.0), torch.tensor(0)).mean().item() == 0.0
