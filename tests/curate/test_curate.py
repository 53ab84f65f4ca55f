"""The curate command on real data: duplicates and near-duplicates injected into GSM8K train are found, GSM8K test
questions injected into it are removed by decontamination, PII fixtures are scrubbed, the filters drop what they
name, every recipe format is read, quality scoring keeps its top fraction, and a rerun writes the same bytes."""

import json
import math
from itertools import islice

import pytest

from tunekit.config import load_config
from tunekit.curate.config import CurateConfig
from tunekit.curate.pii import luhn_valid, scrub_text
from tunekit.curate.pipeline import curate
from tunekit.curate.quality import Scorer
from tunekit.data import synthetic
from tunekit.data.sft import DataConfig, load_sft_data
from tunekit.data.sources import read_rows
from tunekit.errors import UserError

GSM8K = ["prompt_column=question", "completion_column=answer", "progress=false"]


def rows_of(path, n=None):
    with open(path) as f:
        return [json.loads(line) for line in islice(f, n)]


def write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run(tmp_path, inputs, *overrides, name="clean"):
    paths = json.dumps([str(p) for p in (inputs if isinstance(inputs, list) else [inputs])])
    config = load_config(CurateConfig, None, [f"inputs={paths}", f"output={tmp_path / name}.jsonl", *overrides])
    return curate(config), tmp_path / f"{name}.jsonl"


def test_injected_duplicates_and_near_duplicates_in_gsm8k_are_found(tmp_path, shared_data):
    rows = rows_of(shared_data / "gsm8k" / "train.jsonl", 300)
    injected = {}
    for k in range(8):  # exact duplicates up to case, spacing and punctuation
        original = rows[10 * k]
        injected[len(rows)] = 10 * k
        rows.append({"question": "  " + original["question"].upper() + " ", "answer": original["answer"] + "!"})
    long_rows = [i for i in range(300) if i % 10 and len((rows[i]["question"] + rows[i]["answer"]).split()) > 90]
    for i in long_rows[:8]:  # near-duplicates: one word of the answer changed
        words = rows[i]["answer"].split(" ")
        words[len(words) // 2] = "marbles"
        injected[len(rows)] = i
        rows.append({"question": rows[i]["question"], "answer": " ".join(words)})
    source = write(tmp_path / "train.jsonl", rows)
    report, out = run(tmp_path, source, *GSM8K)
    found = {e["row"]: e for reason in ("exact_duplicate", "near_duplicate") for e in report.listed.get(reason, [])}
    expected = {f"{source} line {i + 1}": f"{source} line {j + 1}" for i, j in injected.items()}
    assert {row: entry["duplicate_of"] for row, entry in found.items()} == expected
    assert report.removed["exact_duplicate"] == 8 and report.removed["near_duplicate"] == 8
    assert all(e["jaccard"] >= 0.8 for e in report.listed["near_duplicate"])
    assert len(rows_of(out)) == report.kept == 300

    # One word in about a hundred changed leaves a Jaccard similarity near 0.9: at 0.95 they are kept.
    strict, _ = run(tmp_path, source, *GSM8K, "near_duplicates.threshold=0.95", name="strict")
    assert strict.removed["near_duplicate"] == 0 and strict.removed["exact_duplicate"] == 8


def test_gsm8k_test_questions_injected_into_train_are_removed_and_listed(tmp_path, shared_data):
    train = rows_of(shared_data / "gsm8k" / "train.jsonl", 200)
    test = rows_of(shared_data / "gsm8k" / "test.jsonl")
    picked = [3, 50, 400, 777, 1200]  # test lines 4, 51, ...
    for k, t in enumerate(picked):
        train.insert(20 * k + 7, {"question": test[t]["question"], "answer": train[k]["answer"]})
    source = write(tmp_path / "train.jsonl", train)
    test_file = shared_data / "gsm8k" / "test.jsonl"
    report, out = run(tmp_path, source, *GSM8K, f"decontaminate.paths=[{test_file}]")
    listed = {e["row"]: e["eval_row"] for e in report.listed["contaminated"]}
    for k, t in enumerate(picked):
        assert listed.pop(f"{source} line {20 * k + 8}") == f"{test_file} line {t + 1}"
    # GSM8K's train line 21 shares a 13-gram with test line 633 of its own: the only other row removed.
    assert listed == {f"{source} line 22": f"{test_file} line 633"}
    kept_questions = {row["question"] for row in rows_of(out)}
    assert not kept_questions & {test[t]["question"] for t in picked}


def test_pii_fixtures_are_scrubbed_with_typed_placeholders_and_counted(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Mail jane.doe@example.com or call +1 415-555-0132 about 42 apples."},
                {"role": "assistant", "content": "Card 4111 1111 1111 1111 expires; 4111 1111 1111 1112 is no card."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "The server is 192.168.10.20, key sk-proj-A1b2C3d4E5f6G7h8I9j0K1l2."},
                {"role": "assistant", "content": 'Set api_key = "x9Y8w7V6u5T4s3R2q1P0" and AKIAIOSFODNN7EXAMPLE.'},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "What is 1,000,000 - 5551234 + 3.14? Version 1.2.3, date 2024-01-15."},
                {"role": "assistant", "content": "The answer is 994449.14 (call (212) 555-0199 if unsure)."},
            ]
        },
    ]
    report, out = run(tmp_path, write(tmp_path / "chat.jsonl", rows), "progress=false")
    cleaned = [json.dumps(row) for row in rows_of(out)]
    assert "[EMAIL]" in cleaned[0] and "[PHONE]" in cleaned[0] and cleaned[0].count("[CREDIT_CARD]") == 1
    assert "4111 1111 1111 1112" in cleaned[0] and "42 apples" in cleaned[0]  # fails Luhn; not PII
    assert "[IP_ADDRESS]" in cleaned[1] and cleaned[1].count("[SECRET]") == 3 and 'api_key = \\"[SECRET]' in cleaned[1]
    assert "1,000,000 - 5551234 + 3.14? Version 1.2.3, date 2024-01-15" in cleaned[2] and "[PHONE]" in cleaned[2]
    assert report.pii == {"email": 1, "phone": 2, "credit_card": 1, "ip_address": 1, "secret": 3}
    assert report.rows_with_pii == 3 and report.formats[str(tmp_path / "chat.jsonl")] == "messages"
    for text in ("jane.doe@example.com", "415-555-0132", "4111 1111 1111 1111", "192.168.10.20", "AKIAIOSFODNN7"):
        assert all(text not in row for row in cleaned)
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert scrub_text("no pii here", {"email"}, {}) == "no pii here"


def test_filters_drop_empty_turns_long_repetitive_and_foreign_rows(tmp_path):
    rows = [
        {"prompt": "What is 2 + 2?", "completion": "2 + 2 = 4. #### 4"},
        {"prompt": "What is 3 + 3?", "completion": "   "},
        {"prompt": "Say something.", "completion": "the cat sat " * 30},
        {
            "prompt": "Wie viele Äpfel hat Anna?",
            "completion": "Anna hat heute drei grüne Äpfel und zwei Birnen gekauft.",
        },
        {"prompt": "Count.", "completion": " ".join(str(i) for i in range(400))},
    ]
    source = write(tmp_path / "pc.jsonl", rows)
    report, out = run(tmp_path, source, "progress=false", "filters.max_tokens=600", "filters.languages=[en]")
    assert [
        e["row"] for reason in ("empty_turn", "too_long", "repetition", "language") for e in report.listed[reason]
    ] == [f"{source} line {n}" for n in (2, 5, 3, 4)]
    assert report.listed["language"][0]["language"] == "de"
    assert rows_of(out) == rows[:1] and report.kept_tokens > 0


def test_every_recipe_format_is_read_and_the_output_feeds_the_recipes(tmp_path, shared_data, tokenizer):
    inputs = {
        # U+2028 is a line break to str.splitlines: written raw, it would cut its row in two for the recipes' reader.
        "text.jsonl": [{"text": "Some plain text."}, {"text": "Some plain text!"}, {"text": "Zwei\u2028Zeilen, é"}],
        "pairs.jsonl": rows_of(shared_data / "hh-rlhf" / "harmless-base-test.jsonl", 3),
        "prompts.jsonl": [{"prompt": "What is 1 + 1?", "answer": "2"}],
        "chat.jsonl": [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}],
    }
    reports = {}
    for name, rows in inputs.items():
        reports[name], _ = run(
            tmp_path, write(tmp_path / name, rows), "progress=false", name=name.split(".")[0] + "-out"
        )
    assert [next(iter(r.formats.values())) for r in reports.values()] == ["text", "pairs", "prompts", "messages"]
    assert reports["text.jsonl"].removed["exact_duplicate"] == 1
    text_out = read_rows(str(tmp_path / "text-out.jsonl"))
    assert [row["text"] for row in text_out.rows] == ["Some plain text.", "Zwei\u2028Zeilen, é"]

    # GSM8K as parquet, curated into JSON Lines that SFT reads as data.path with the same column keys.
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "gsm8k.parquet"
    pq.write_table(pa.Table.from_pylist(rows_of(shared_data / "gsm8k" / "train.jsonl", 40)), parquet)
    report, out = run(tmp_path, parquet, *GSM8K, name="gsm8k-clean")
    assert report.rows == report.kept == 40 and report.listed == {}
    data = DataConfig(path=str(out), prompt_column="question", completion_column="answer", max_length=1024)
    train, held_out, _ = load_sft_data(data, tokenizer, 0, synthetic.sft_examples)
    assert len(train) + len(held_out) == 40


def test_quality_scoring_keeps_the_best_fraction_and_a_rerun_writes_the_same_bytes(tmp_path, shared_data):
    rows = rows_of(shared_data / "gsm8k" / "train.jsonl", 12)
    source = write(tmp_path / "train.jsonl", rows)
    args = [*GSM8K, "quality.method=perplexity", "quality.model=tiny-llama", "quality.keep_fraction=0.3"]
    args.append("quality.max_length=128")
    report, out = run(tmp_path, source, *args)
    again, out_again = run(tmp_path, source, *args, name="again")
    assert out.read_bytes() == out_again.read_bytes() and report.listed == again.listed
    assert report.kept == math.ceil(0.3 * 12) == 4 and report.removed["low_quality"] == 8
    scores = Scorer("perplexity", "tiny-llama", 8, 128)([f"{r['question']}\n{r['answer']}" for r in rows])
    best = sorted(range(12), key=lambda i: (-scores[i], i))[:4]
    assert rows_of(out) == [rows[i] for i in sorted(best)]
    assert report.quality_threshold == pytest.approx(min(scores[i] for i in best), rel=1e-5)
    dropped = sorted(set(range(12)) - set(best))
    assert [e["row"] for e in report.listed["low_quality"]] == [f"{source} line {i + 1}" for i in dropped]
    saved = json.loads((tmp_path / "clean.report.json").read_text())
    assert saved["kept"] == 4 and saved["removed"]["low_quality"] == 8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["output=x.jsonl"], "curate needs inputs"),
        (["inputs=missing.jsonl", "output=x.jsonl"], "input 'missing.jsonl' does not exist"),
        (["pii=[email, passport]"], r"pii has unknown kinds \['passport'\]"),
        (["quality.method=reward"], "quality.model is needed for method reward"),
    ],
)
def test_bad_settings_are_named(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        curate(load_config(CurateConfig, None, overrides))
