"""lm-evaluation-harness tasks (``tasks: [lm_eval:gsm8k]``) run on the evaluated model by lm-eval itself.

The model is built by lm-eval's own ``HFLM`` from ``model.path``: a base model or merged directory as
``pretrained``, an adapter run's final/ as ``pretrained=<its base>`` plus ``peft=<final/>``. tunekit's fast paths
play no part, so the scores are the ones ``lm_eval --model hf`` gives for the same model. lm-eval is an optional
extra (``pip install "tunekit[lm-eval]"``) and is imported only inside these functions, so tunekit imports
without it.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.errors import ConfigError, DataError, require
from tunekit.eval.tasks import LM_EVAL_PREFIX as PREFIX
from tunekit.eval.tasks import TaskResult
from tunekit.models.load import (
    ModelConfig,
    adapter_base,
    adapter_dir,
    load_model,
    load_tokenizer,
    resolve_model_path,
)

INSTALL = 'pip install "tunekit[lm-eval]"'
HF_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class LMEvalConfig:
    # A folder of lm-eval task YAMLs (recipes/eval/lm_eval_tasks holds gsm8k_local), searched besides lm-eval's own
    # tasks and winning over them on a shared name. A relative data_files path inside a YAML resolves against the
    # working directory. null: lm-eval's own tasks only.
    include_path: str | None = None
    # Few-shot examples in each prompt; null: each task's own setting (lm-eval's gsm8k: 5). A task whose YAML sets
    # 0 stays at 0.
    num_fewshot: int | None = None
    # Evaluate only the first N documents of each task (null: all of them); the counts say how many ran.
    limit: int | None = None
    # Requests per forward pass or generate call; null: the recipe's batch_size.
    batch_size: int | None = None
    # Render prompts with the tokenizer's chat template (for chat-tuned models; fewshot examples as turns).
    apply_chat_template: bool = False
    # Generation settings laid over every generate_until task's own, e.g. {max_gen_toks: 64}; {} keeps the tasks'.
    gen_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.num_fewshot is None or self.num_fewshot >= 0, "num_fewshot", "must be 0 or more, or null")
        require(self.limit is None or self.limit >= 1, "limit", "must be at least 1, or null for every document")
        require(self.batch_size is None or self.batch_size >= 1, "batch_size", "must be at least 1, or null")
        require(
            self.include_path is None or bool(self.include_path.strip()),
            "include_path",
            "is empty; give a folder of task YAMLs or null",
        )


@dataclass
class LMEvalPlan:
    """What :func:`run_lm_eval` needs, settled before anything is loaded or written."""

    names: list[str]  # lm-eval task, group or tag names (without the prefix), in the order asked
    task_manager: Any  # lm_eval.tasks.TaskManager that knows every name


@dataclass
class LMEvalRun:
    results: dict[str, TaskResult]  # "lm_eval:<task>" -> its metrics ("lm_eval/<task>/<metric>") and counts
    record: dict[str, Any]  # results.json "lm_eval": versions, few-shot counts, limit, model arguments
    samples: list[dict[str, Any]]  # lm_eval_samples.jsonl: one line per document and task


def is_lm_eval_task(name: str) -> bool:
    return name.startswith(PREFIX)


def plan_lm_eval(tasks: list[str], config: LMEvalConfig, model: ModelConfig) -> LMEvalPlan | None:
    """Check the lm-eval tasks of ``tasks`` can run (None when there are none): lm-eval is installed, every name
    is one of its tasks, groups or tags (or matches one, as a glob), and the model settings are ones HFLM takes.

    The task index of lm-eval's own ~15,000 task YAMLs takes seconds to build, so when ``include_path`` holds every
    name asked for, only that folder is read.
    """
    names = [t[len(PREFIX) :] for t in tasks if is_lm_eval_task(t)]
    if not names:
        return None
    asked = ", ".join(PREFIX + n for n in names)
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError(
            f"tasks names {asked}, which needs lm-evaluation-harness, and it is not installed: {INSTALL}"
        ) from None
    if model.quantization != "none":
        raise ConfigError(
            f"model.quantization={model.quantization} does not reach lm-eval's HFLM, which loads the model for "
            f"{asked}; set model.quantization=none (and model.dtype=bf16 to save memory)"
        )
    include = None
    if config.include_path is not None:
        include = Path(config.include_path).expanduser()
        if not include.is_dir():
            raise ConfigError(f"lm_eval.include_path {config.include_path!r} is not a folder of task YAMLs")
        local = TaskManager(include_path=str(include), include_defaults=False)
        if not _unknown(names, local.all_tasks):
            check_data_files(names, local)
            return LMEvalPlan(names, local)
    manager = TaskManager(include_path=str(include) if include else None)
    unknown = _unknown(names, manager.all_tasks)
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, manager.all_tasks, n=1)
        hint = f"; did you mean {PREFIX + close[0]!r}?" if close else ""
        where = f"lm-eval's tasks or lm_eval.include_path={config.include_path}" if include else "lm-eval's tasks"
        raise ConfigError(
            f"tasks names an unknown lm-eval task {PREFIX + name!r}{hint} (not among {where}; `lm_eval ls tasks` "
            "lists them, and a task YAML that does not parse is skipped)"
        )
    check_data_files(names, manager)
    return LMEvalPlan(names, manager)


def _unknown(names: list[str], known: list[str]) -> list[str]:
    """The names that are neither a known task, group or tag nor a glob matching one."""
    index = set(known)
    return [n for n in names if n not in index and not fnmatch.filter(known, n)]


def check_data_files(names: list[str], manager: Any) -> None:
    """Refuse a task whose YAML names local data files that are not there, before any model loads.

    lm-eval hands ``dataset_kwargs.data_files`` to ``datasets.load_dataset``, which resolves a relative path
    against the working directory, not the YAML's folder: the usual way a local task breaks.
    """
    for name in names:
        entry = manager.task_index.get(name)
        kwargs = (getattr(entry, "cfg", None) or {}).get("dataset_kwargs") or {}
        files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
        for path in _paths(files):
            if "://" in path or any(c in path for c in "*?["):
                continue  # a URL or a glob is datasets' to resolve
            if not Path(path).expanduser().is_file():
                raise ConfigError(
                    f"tasks names {PREFIX + name!r}, whose task file {entry.yaml_path} reads data_files {path!r}, "
                    f"which does not exist (a relative path is taken from the working directory, {Path.cwd()})"
                )


def _paths(files: Any) -> list[str]:
    # data_files is a path, a list of them, or a split -> path(s) mapping.
    if isinstance(files, str):
        return [files]
    if isinstance(files, list | tuple):
        return [p for f in files for p in _paths(f)]
    if isinstance(files, dict):
        return [p for f in files.values() for p in _paths(f)]
    return []


def hflm_arguments(model: ModelConfig, device: str, batch_size: int) -> dict[str, Any]:
    """Keyword arguments of lm-eval's ``HFLM`` for ``model.path``.

    An adapter directory becomes ``pretrained=<recorded base>, peft=<adapter>``, with the run's own tokenizer
    (saved beside the adapter) rather than the base's; an embedded model's name becomes its cached folder.
    """
    path = model.path
    arguments: dict[str, Any] = {}
    adapter = adapter_dir(path)
    if adapter is not None:
        arguments["peft"] = str(adapter.resolve())
        path = adapter_base(adapter)
    return {
        "pretrained": resolve_model_path(path),
        **arguments,
        "tokenizer": tokenizer_source(model.path),
        "dtype": HF_DTYPES[model.dtype],
        "attn_implementation": model.attn_implementation,
        "trust_remote_code": model.trust_remote_code,
        # HFLM's default is "main"; a local directory ignores it.
        "revision": model.revision or "main",
        "device": device,
        "batch_size": batch_size,
    }


def tokenizer_source(path: str) -> str:
    """Where the tokenizer of ``path`` is: the newest directory of an adapter chain that saved one (a run's final/
    keeps the tokenizer it trained with), else the base model at the chain's end."""
    adapter = adapter_dir(path)
    while adapter is not None:
        if any((adapter / name).is_file() for name in TOKENIZER_FILES):
            return str(adapter)
        path = adapter_base(adapter)
        adapter = adapter_dir(path)
    return resolve_model_path(path)


def build_hflm(model: ModelConfig, device: str, batch_size: int) -> tuple[Any, dict[str, Any]]:
    """lm-eval's HFLM for ``model`` and the arguments it was built from (recorded in results.json).

    An adapter whose recorded base is itself an adapter (a run started from an earlier run's final/) is more than
    HFLM's one ``peft=`` can load: that chain is merged by tunekit's loader (plain transformers + peft, no fast
    paths) and handed to HFLM as a model object.
    """
    from lm_eval.models.huggingface import HFLM

    arguments = hflm_arguments(model, device, batch_size)
    base = arguments["pretrained"]
    if "peft" in arguments and adapter_dir(base) is not None:
        merged = load_model(model).eval().to(device)
        tokenizer = load_tokenizer(arguments["tokenizer"], model.trust_remote_code, model.revision)
        lm = HFLM(pretrained=merged, tokenizer=tokenizer, batch_size=batch_size)
        return lm, {"pretrained": f"{model.path} (an adapter chain, merged by tunekit)", "batch_size": batch_size}
    return HFLM(**arguments), arguments


def run_lm_eval(
    plan: LMEvalPlan, config: LMEvalConfig, model: ModelConfig, device: str, batch_size: int, seed: int
) -> LMEvalRun:
    """Run the planned tasks through ``lm_eval.simple_evaluate`` and turn its output into tunekit's results."""
    from lm_eval import simple_evaluate

    lm, arguments = build_hflm(model, device, config.batch_size or batch_size)
    try:
        output = simple_evaluate(
            model=lm,
            tasks=list(plan.names),
            num_fewshot=config.num_fewshot,
            limit=config.limit,
            apply_chat_template=config.apply_chat_template,
            fewshot_as_multiturn=config.apply_chat_template,
            gen_kwargs=dict(config.gen_kwargs) or None,
            task_manager=plan.task_manager,
            log_samples=True,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    except FileNotFoundError as err:
        # A data file check_data_files could not see: older lm-eval releases do not index the task configs.
        raise DataError(
            f"an lm-eval task's data file is missing: {err} (a relative data_files path is taken from the working "
            f"directory, {Path.cwd()})"
        ) from None
    return collect(output, arguments, config)


def collect(output: dict[str, Any], arguments: dict[str, Any], config: LMEvalConfig) -> LMEvalRun:
    """lm-eval's result dict -> one :class:`TaskResult` per task and group, the record kept in results.json and
    the per-document sample lines."""
    import lm_eval

    results: dict[str, TaskResult] = {}
    samples_by_task = output.get("samples") or {}
    n_samples = output.get("n-samples") or {}
    for section in ("results", "groups"):
        for task, values in (output.get(section) or {}).items():
            if f"{PREFIX}{task}" in results:
                continue  # a group appears under both keys
            metrics = {f"lm_eval/{task}/{k}": _number(v) for k, v in values.items() if _is_metric(k, v)}
            # A group's counts are its tasks' together.
            members = [task] if task in n_samples else (output.get("group_subtasks") or {}).get(task, [])
            counts = [n_samples[m] for m in members if m in n_samples]
            evaluated = {
                "examples": sum(int(c.get("effective", 0)) for c in counts),
                "available": sum(int(c.get("original", 0)) for c in counts),
            }
            results[f"{PREFIX}{task}"] = TaskResult(metrics, evaluated)
    configs = output.get("configs") or {}
    tasks = {
        task: {
            "version": (output.get("versions") or {}).get(task),
            "num_fewshot": (output.get("n-shot") or {}).get(task),
            "higher_is_better": (output.get("higher_is_better") or {}).get(task),
            "dataset": configs.get(task, {}).get("dataset_path"),
            "data_files": (configs.get(task, {}).get("dataset_kwargs") or {}).get("data_files"),
            "config_source": (configs.get(task, {}).get("metadata") or {}).get("config_source"),
        }
        for task in n_samples
    }
    record = {
        "version": getattr(lm_eval, "__version__", None),
        "model_args": {k: v for k, v in arguments.items() if k not in ("device", "batch_size")},
        "limit": config.limit,
        "num_fewshot": config.num_fewshot,
        "batch_size": arguments["batch_size"],
        "apply_chat_template": config.apply_chat_template,
        "gen_kwargs": dict(config.gen_kwargs),
        "tasks": tasks,
    }
    samples = [sample_line(task, s) for task, lines in samples_by_task.items() for s in lines]
    return LMEvalRun(results, record, samples)


def sample_line(task: str, sample: dict[str, Any]) -> dict[str, Any]:
    """One document's request and outcome, without the document itself (a task's rows can be large)."""
    arguments = sample.get("arguments") or []
    first = arguments[0] if arguments else None
    line = {
        "task": task,
        "doc_id": sample.get("doc_id"),
        "prompt": first[0] if isinstance(first, list | tuple) and first else first,
        "target": sample.get("target"),
        "response": sample.get("resps"),
        "filtered": sample.get("filtered_resps"),
        "filter": sample.get("filter"),
    }
    line.update({m: sample.get(m) for m in sample.get("metrics") or [] if m in sample})
    return line


def _is_metric(key: str, value: Any) -> bool:
    # lm-eval's result rows mix metrics ("exact_match,strict-match") with bookkeeping (alias, name, sample_len);
    # a stderr it could not compute is the string "N/A", kept as null.
    if key in ("alias", "name", "sample_len", "sample_count"):
        return False
    return (isinstance(value, int | float) and not isinstance(value, bool)) or value == "N/A"


def _number(value: Any) -> float | None:
    if value == "N/A":
        return None
    number = float(value)
    return number if math.isfinite(number) else None
