"""The held-out task metric: which checker a config's task_metric stands for, and what it scores."""

import pytest
import torch

from tunekit.errors import ConfigError
from tunekit.rl.rollout import PromptExample, Rollout
from tunekit.rl.task import load_task_metric


def _prompts(**columns):
    return [PromptExample("Question: What is 2 + 3?\nAnswer:", [1, 2, 3], dict(columns), 0)]


def _rollout(completions, answers):
    n = len(completions)
    empty = torch.zeros(n, 1, dtype=torch.long)
    return Rollout(
        input_ids=empty,
        attention_mask=empty,
        position_ids=empty,
        labels=empty,
        truncated=torch.zeros(n, dtype=torch.bool),
        completion_lengths=torch.ones(n, dtype=torch.long),
        prompts=["Question: What is 2 + 3?\nAnswer:"] * n,
        completions=completions,
        columns={"answer": answers},
        prompt_index=[0] * n,
    )


def test_auto_is_exact_match_when_the_rows_have_answers_and_nothing_otherwise():
    metric = load_task_metric("auto", _prompts(answer="5"))
    assert metric is not None and metric.name == "math_correct" and metric.key == "task/math_correct"
    assert load_task_metric("auto", _prompts(topic="sums")) is None
    assert load_task_metric(None, _prompts(answer="5")) is None
    assert load_task_metric("auto", []) is None


def test_the_metric_scores_each_completion_with_its_checker():
    metric = load_task_metric("math_correct", _prompts(answer="5"))
    rollout = _rollout([" 2 + 3 = 5. #### 5", " 2 + 3 = 6. #### 6", " 2 + 3 = 6. #### 5"], ["5", "5", "5"])
    assert metric.score(rollout).tolist() == [1.0, 0.0, 1.0]


def test_a_named_checker_is_loaded_like_a_reward_function_and_a_reward_model_is_refused():
    assert load_task_metric("format", _prompts()).name == "format"
    with pytest.raises(ConfigError, match="unknown reward 'math_corect'"):
        load_task_metric("math_corect", _prompts())
    with pytest.raises(ConfigError, match="task_metric 'model:runs/rm/final' names a reward model"):
        load_task_metric("model:runs/rm/final", _prompts())
