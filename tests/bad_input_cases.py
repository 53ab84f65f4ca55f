"""The inputs of the bad-input table (tests/test_bad_input_table.py): for every recipe, each malformed data file, and
one-off mistakes of config values, keys, models, rewards, tools and trackers, with what each message must name."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunekit.recipes import constitution, distill, dpo, eval, grpo, kto, label, ppo, pretrain, reward, sft

# recipe -> (module, a good row, the column the data cases break, arguments every case of it takes)
RECIPES = {
    "sft": (sft, {"prompt": "a", "completion": "b"}, "completion", []),
    "pretrain": (pretrain, {"text": "some words"}, "text", []),
    "reward": (reward, {"prompt": "a", "chosen": "b", "rejected": "c"}, "rejected", []),
    "dpo": (dpo, {"prompt": "a", "chosen": "b", "rejected": "c"}, "rejected", []),
    "grpo": (grpo, {"prompt": "a", "answer": "1"}, "prompt", ["model.path=tiny-llama"]),
    "ppo": (ppo, {"prompt": "a", "answer": "1"}, "prompt", ["model.path=tiny-llama", "reward_model=null"]),
    "eval": (eval, {"prompt": "a", "completion": "b"}, "completion", ["tasks=[exact_match, perplexity]"]),
    "label": (label, {"prompt": "a", "answer": "1"}, "prompt", ["model.path=tiny-llama"]),
    "constitution": (constitution, {"prompt": "a"}, "prompt", ["model.path=tiny-llama"]),
    "kto": (kto, {"prompt": "a", "completion": "b", "label": True}, "completion", []),
    "distill": (distill, {"prompt": "a", "completion": "b"}, "completion", ["teacher.path=tiny-llama"]),
}


@dataclass(frozen=True)
class Case:
    recipe: str
    what: str  # the input, as the table's first column says it
    args: tuple[str, ...]  # "{tmp}" is the case's own folder; output_dir={tmp}/run comes first
    names: str  # what the message must contain ("{tmp}", "{col}" filled in)
    setup: Callable[[Path], None] | None = None  # writes the case's files into its folder
    writes_nothing: bool = True  # output_dir does not exist afterwards (False: it existed and is unchanged)


def _jsonl(lines: Callable[[dict, str], list[str]], recipe: str, name: str = "d.jsonl") -> Callable[[Path], None]:
    _, good, column, _ = RECIPES[recipe]

    def write(folder: Path) -> None:
        # surrogateescape writes a lone "\udcff" as the byte 0xff
        text = "".join(line + "\n" for line in lines(good, column))
        (folder / name).write_bytes(text.encode("utf-8", "surrogateescape"))

    return write


def _with(good: dict, column: str, value: object) -> str:
    return json.dumps({**good, column: value})


# (what, lines of d.jsonl from the good row and the broken column, extra args, what the message names)
DATA_CASES = [
    ("a line that is not JSON", lambda g, c: [json.dumps(g), '{"oops": '], (), "d.jsonl line 2 is not valid JSON"),
    (
        "a row without the needed column",
        lambda g, c: [json.dumps(g), json.dumps({k: v for k, v in g.items() if k != c})],
        (),
        "d.jsonl line 2: missing column '{col}'",
    ),
    ("an empty file", lambda g, c: [], (), "d.jsonl holds no rows"),
    ("a row that is a JSON list", lambda g, c: [json.dumps(g), "[1, 2]"], (), "d.jsonl line 2 is a JSON list"),
    (
        "a byte that is not UTF-8",
        lambda g, c: [json.dumps(g), json.dumps(g).replace('"', '\udcff"', 1)],
        (),
        "d.jsonl line 2 is not valid UTF-8 (byte 0xff at column 2)",
    ),
    ("a null in the needed column", lambda g, c: [json.dumps(g), _with(g, c, None)], (), "d.jsonl line 2"),
    ("a number where text belongs", lambda g, c: [json.dumps(g), _with(g, c, 7)], (), "d.jsonl line 2"),
    (
        "an empty value, data.empty_rows=error",
        lambda g, c: [json.dumps(g), _with(g, c, " ")],
        ("data.empty_rows=error",),
        "d.jsonl line 2",
    ),
]


def _data_cases() -> list[Case]:
    cases = []
    for recipe in RECIPES:
        for what, lines, extra, names in DATA_CASES:
            if recipe == "eval" and "empty_rows" in what:
                continue  # evaluation scores every row it is given
            args = ("data.path={tmp}/d.jsonl", "data.eval_fraction=0", *extra)
            if recipe == "eval":
                args = tuple(a for a in args if "eval_fraction" not in a)
            cases.append(Case(recipe, what, args, names, _jsonl(lines, recipe)))
        cases.append(
            Case(recipe, "a data path that does not exist", ("data.path={tmp}/nothing.jsonl",), "nothing.jsonl")
        )
        cases.append(
            Case(
                recipe,
                "a data file of an unknown kind",
                ("data.path={tmp}/d.txt",),
                "unsupported extension '.txt'",
                lambda folder: (folder / "d.txt").write_text("a\n"),
            )
        )
    return cases


def _damaged_checkpoint(folder: Path) -> None:
    step = folder / "run" / "checkpoints" / "step-2"
    step.mkdir(parents=True)
    (step / "trainable.safetensors").write_bytes(b"cut sh")
    files = {"trainable.safetensors": {"bytes": 12, "sha256": "0" * 64}}
    (step / "COMPLETE").write_text(json.dumps({"files": files}))


def _model_without_tokenizer(folder: Path) -> None:
    (folder / "model").mkdir()
    (folder / "model" / "config.json").write_text(json.dumps({"model_type": "llama"}))


def _model_with_another_vocabulary(folder: Path) -> None:
    from tunekit.models.tiny import build_causal_lm, train_tokenizer

    shape = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1
    )
    build_causal_lm(folder, train_tokenizer(vocab_size=300), shape)


ONE_OFF = [
    # Values out of range: refused when the config is read.
    Case("sft", "train.lr=-1", ("train.lr=-1",), "train.lr must be positive, got -1.0"),
    Case("sft", "train.micro_batch_size=0", ("train.micro_batch_size=0",), "train.micro_batch_size must be at least 1"),
    Case("sft", "train.grad_accum_steps=0", ("train.grad_accum_steps=0",), "train.grad_accum_steps must be at least 1"),
    Case("dpo", "train.epochs=0", ("train.epochs=0",), "train.epochs must be at least 1, got 0"),
    Case("reward", "train.warmup_ratio=2", ("train.warmup_ratio=2",), "train.warmup_ratio must be in [0, 1)"),
    Case("pretrain", "train.keep_checkpoints=-1", ("train.keep_checkpoints=-1",), "train.keep_checkpoints must be"),
    Case("sft", "data.max_length=0", ("data.max_length=0",), "data.max_length must be at least 1, got 0"),
    Case("dpo", "data.eval_fraction=1.5", ("data.eval_fraction=1.5",), "data.eval_fraction must be in [0, 1)"),
    Case("grpo", "data.synthetic_size=0", ("data.synthetic_size=0",), "data.synthetic_size must be at least 1"),
    Case("sft", "model.adapter.r=0", ("model.adapter.r=0",), "model.adapter.r must be at least 1, got 0"),
    Case("reward", "model.adapter.dropout=1", ("model.adapter.dropout=1",), "model.adapter.dropout must be in [0, 1)"),
    Case("grpo", "sampling.top_p=0", ("sampling.top_p=0",), "sampling.top_p must be in (0, 1], got 0.0"),
    Case("sft", "max_steps=0", ("max_steps=0",), "max_steps must be at least 1 or null (no cap), got 0"),
    Case("dpo", "max_steps=-5", ("max_steps=-5",), "max_steps must be at least 1 or null (no cap), got -5"),
    Case("ppo", "ppo.minibatches=1000", ("ppo.minibatches=1000",), "ppo.minibatches is 1000, more than the"),
    Case("eval", "batch_size=0", ("batch_size=0",), "batch_size must be at least 1, got 0"),
    Case("eval", "data.max_examples=0", ("data.max_examples=0",), "data.max_examples must be at least 1"),
    # Keys and values that are not what the config takes.
    Case("sft", "a key that does not exist", ("train.lrr=0.1",), "train.lrr"),
    Case("grpo", "a value of the wrong type", ("train.lr=fast",), "train.lr"),
    Case("dpo", "an argument without =", ("train.lr",), "train.lr"),
    Case("sft", "a key that moved", ("data.padding_free=false",), "data.padding_free is now model.fast_paths"),
    Case("eval", "a task that does not exist", ("tasks=[bleu]",), "bleu"),
    Case("sft", "a --config file that does not exist", ("--config", "{tmp}/missing.yaml"), "missing.yaml"),
    Case(
        "sft",
        "train.compile with every fast path off",
        ("train.compile=true", "model.fast_paths.enabled=false"),
        "train.compile needs model.fast_paths.enabled=true",
    ),
    # The run directory and checkpoints.
    Case(
        "sft",
        "output_dir is a file",
        (),
        "output_dir {tmp}/run is a file, not a folder",
        lambda folder: (folder / "run").write_text("not a folder"),
        writes_nothing=False,
    ),
    Case("sft", "resume= a folder that is no checkpoint", ("resume={tmp}",), "is not a complete checkpoint directory"),
    Case(
        "dpo",
        "resume= a damaged checkpoint",
        ("resume={tmp}/run/checkpoints/step-2",),
        "names a damaged checkpoint: trainable.safetensors has 6 bytes; 12 were written",
        _damaged_checkpoint,
        writes_nothing=False,
    ),
    Case(
        "pretrain",
        "a run directory that holds a run, without resume",
        (),
        "already holds a run; pass resume=auto",
        lambda folder: (folder / "run").mkdir() or (folder / "run" / "metrics.jsonl").write_text(""),
        writes_nothing=False,
    ),
    # Models.
    Case("sft", "model.path that does not exist", ("model.path={tmp}/no-model",), "{tmp}/no-model"),
    Case("eval", "model.path that does not exist", ("model.path={tmp}/no-model",), "{tmp}/no-model"),
    Case(
        "reward",
        "a model folder without a tokenizer",
        ("model.path={tmp}/model",),
        "{tmp}/model",
        _model_without_tokenizer,
    ),
    # Reward functions.
    Case("grpo", "a reward function that does not exist", ("rewards=[{name: no_such_reward}]",), "no_such_reward"),
    Case(
        "grpo",
        "a row without the column a reward needs",
        ("data.path={tmp}/d.jsonl", "data.eval_fraction=0"),
        "d.jsonl line 6 lacks what a reward function needs",
        lambda folder: (folder / "d.jsonl").write_text(
            "".join(
                json.dumps({"prompt": f"{i} + 1 =", **({"answer": str(i + 1)} if i != 5 else {})}) + "\n"
                for i in range(40)
            )
        ),
    ),
    Case("ppo", "PPO with no reward at all", ("rewards=[]",), "rewards is empty and reward_model is unset"),
    # Distillation's teacher.
    Case("distill", "teacher.path that does not exist", ("teacher.path={tmp}/no-teacher",), "{tmp}/no-teacher"),
    Case(
        "distill",
        "a teacher with another vocabulary",
        ("teacher.path={tmp}/model",),
        "do not share a vocabulary",
        lambda folder: _model_with_another_vocabulary(folder / "model"),
    ),
    Case("distill", "loss.beta=1 for jsd", ("loss.divergence=jsd", "loss.beta=1"), "loss.beta must be in (0, 1)"),
    Case("distill", "on_policy.fraction=2", ("on_policy.fraction=2",), "on_policy.fraction must be in [0, 1]"),
    # KTO's labels and batches.
    Case(
        "kto",
        "a row without a label",
        ("data.path={tmp}/d.jsonl", "data.eval_fraction=0"),
        "d.jsonl line 2: missing column 'label'",
        _jsonl(lambda g, c: [json.dumps(g), json.dumps({"prompt": "a", "completion": "b"})], "kto"),
    ),
    Case(
        "kto",
        "a label that is not true or false",
        ("data.path={tmp}/d.jsonl", "data.eval_fraction=0"),
        "d.jsonl line 2: column 'label' must be true or false, got 'yes'",
        _jsonl(lambda g, c: [json.dumps(g), _with(g, "label", "yes")], "kto"),
    ),
    Case("kto", "train.micro_batch_size=1", ("train.micro_batch_size=1",), "must be at least 2 for KTO"),
    # Tools.
    Case(
        "grpo",
        "tools.use names no tool",
        ("tools.use=[{name: calculater}]",),
        "tools.use[0]: unknown tool 'calculater'",
    ),
    Case(
        "ppo",
        "a tool file that does not exist",
        ("tools.use=[{name: '{tmp}/my_tools.py:lookup'}]",),
        "tools.use[0]: tool '<tmp>/my_tools.py:lookup': file <tmp>/my_tools.py not found",
    ),
    Case(
        "grpo",
        "a tool whose schema cannot be written",
        ("tools.use=[{name: '{tmp}/t.py:lookup'}]",),
        "no JSON schema can be written from its signature",
        lambda folder: (folder / "t.py").write_text("def lookup(key):\n    return key\n"),
    ),
    Case("grpo", "tools with prompts that are not chat", ("tools.use=[{name: calculator}]",), "needs chat prompts"),
    Case(
        "grpo",
        "a reward that cannot take a tool trajectory",
        (
            "data.path=synthetic:big-arithmetic-tools",
            "tools.use=[{name: calculator}]",
            "rewards=[{name: '{tmp}/r.py:score'}]",
        ),
        "cannot be called with the keyword arguments",
        lambda folder: (folder / "r.py").write_text(
            "def score(prompts, completions, answer):\n    return [0.0] * len(completions)\n"
        ),
    ),
    Case(
        "sft",
        "a tools column that is not a list of schemas",
        ("data.path={tmp}/d.jsonl", "data.eval_fraction=0"),
        "d.jsonl line 2: column 'tools' must be a list of tool schemas",
        lambda folder: (folder / "d.jsonl").write_text(
            json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
            + "\n"
            + json.dumps(
                {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "tools": 3}
            )
            + "\n"
        ),
    ),
    Case("sft", "data.tools names no tool", ("data.tools=[calculater]",), "data.tools[0]: unknown tool 'calculater'"),
    # Trackers and judges.
    Case("sft", "train.report_to names no tracker", ("train.report_to=tensorbored",), "did you mean 'tensorboard'"),
    Case("dpo", "a tracker whose package is missing", ("train.report_to=comet_ml",), 'pip install "tunekit[comet-ml]"'),
    Case("eval", "a judge task without a judge", ("tasks=[agreement]",), "judge.name is empty"),
    Case(
        "eval",
        "a rubric that does not exist",
        ("tasks=[judge]", "judge.name=llm:tiny-llama", "judge.rubric=kindness"),
        "rubric 'kindness' is neither a shipped rubric",
    ),
]

CASES = _data_cases() + ONE_OFF
IDS = [f"{c.recipe}: {c.what}" for c in CASES]
