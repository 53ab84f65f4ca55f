"""Curate data files: duplicates, near-duplicates, filters, PII, decontamination and optional quality scoring.

    python -m tunekit.recipes.curate inputs=train.jsonl output=clean.jsonl
    python -m tunekit.recipes.curate inputs=../shared/data/gsm8k/train.jsonl output=runs/gsm8k-clean.jsonl \\
        prompt_column=question completion_column=answer 'decontaminate.paths=[../shared/data/gsm8k/test.jsonl]'

Reads .jsonl, .json, .parquet and .csv rows in any format the recipes read (text, prompt/completion, messages,
pairs, prompts), streaming them twice, and writes the kept rows, with personal data replaced by typed
placeholders, as JSON Lines that any recipe takes as data.path; a JSON report beside it (output with
.report.json) and a table on the terminal say what was removed and why. See docs/data-mixtures.md#curation.
"""

from __future__ import annotations

from tunekit.curate.config import CurateConfig
from tunekit.curate.pipeline import Report, curate
from tunekit.recipes.common import parse_args, run_command, say


def run(config: CurateConfig) -> Report:
    report = curate(config)
    print(report.table())
    say(f"wrote {report.kept} of {report.rows} rows to {config.output}; report {_report_path(config)}")
    return report


def _report_path(config: CurateConfig) -> str:
    if config.report:
        return config.report
    return str(config.output).removesuffix(".jsonl") + ".report.json"


def main(argv: list[str] | None = None) -> Report:
    return run(parse_args(CurateConfig, argv, "curate", __doc__))


if __name__ == "__main__":
    run_command(main)
