"""Label masking, token by token, for each data format."""

import copy

from tunekit.data.formats import render_chat
from tunekit.data.sft import IGNORE_INDEX, DataConfig, tokenize_rows
from tunekit.data.sources import Rows


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_prompt_completion_trains_on_completion_and_eos_only(tokenizer):
    rows = Rows("mem", [{"prompt": "Question: What is 2 + 3?\nAnswer:", "completion": " 2 + 3 = 5. #### 5"}])
    [example], stats = tokenize_rows(rows, DataConfig(), tokenizer)
    prompt = ids(tokenizer, "Question: What is 2 + 3?\nAnswer:")
    completion = ids(tokenizer, " 2 + 3 = 5. #### 5") + [tokenizer.eos_token_id]
    assert example.input_ids == [tokenizer.bos_token_id] + prompt + completion
    assert example.labels == [IGNORE_INDEX] * (1 + len(prompt)) + completion
    assert stats.trainable_tokens == len(completion)


def test_train_on_prompt_labels_everything_but_the_first_token(tokenizer):
    rows = Rows("mem", [{"prompt": "Hi", "completion": " there"}])
    [example], _ = tokenize_rows(rows, DataConfig(train_on_prompt=True), tokenizer)
    assert example.labels[0] == IGNORE_INDEX
    assert example.labels[1:] == example.input_ids[1:]


def test_multi_turn_messages_train_on_every_assistant_turn(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "And 2 + 2?"},
        {"role": "assistant", "content": "4"},
    ]
    [example], _ = tokenize_rows(Rows("mem", [{"messages": messages}]), DataConfig(), tokenizer)
    # Rebuild the expectation by hand from the template's own renderings.
    p1 = render_chat(messages[:2], tokenizer, add_generation_prompt=True)
    a1 = render_chat(messages[:3], tokenizer, add_generation_prompt=False)
    p2 = render_chat(messages[:4], tokenizer, add_generation_prompt=True)
    a2 = render_chat(messages, tokenizer, add_generation_prompt=False)
    pieces = [(p1, False), (a1[len(p1) :], True), (p2[len(a1) :], False), (a2[len(p2) :], True)]
    expected_ids, expected_labels = [], []
    for text, trainable in pieces:
        piece = ids(tokenizer, text)
        expected_ids += piece
        expected_labels += piece if trainable else [IGNORE_INDEX] * len(piece)
    expected_labels[0] = IGNORE_INDEX
    assert example.input_ids == expected_ids
    assert example.labels == expected_labels
    # The trained tokens are exactly each assistant answer followed by its end-of-turn token.
    trained = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "2</s>\n4</s>\n"


def test_text_format_trains_on_all_tokens(tokenizer):
    [example], _ = tokenize_rows(Rows("mem", [{"text": "Ada counted 3 coins."}]), DataConfig(), tokenizer)
    assert example.input_ids[0] == tokenizer.bos_token_id
    assert example.labels == [IGNORE_INDEX] + example.input_ids[1:]


def test_truncation_is_counted_and_fully_truncated_examples_dropped(tokenizer):
    rows = Rows(
        "mem",
        [
            {"prompt": "Q", "completion": " a long completion that will be cut somewhere in the middle"},
            {"prompt": "Question: " + "seven " * 40, "completion": " x"},
        ],
    )
    examples, stats = tokenize_rows(rows, DataConfig(max_length=12), tokenizer)
    assert stats.truncated == 2
    assert stats.dropped == 1
    assert len(examples) == 1 and len(examples[0].input_ids) == 12
    assert examples[0].index == 1  # the row kept, numbered as error messages number it


def test_a_conversation_opening_with_an_assistant_turn_trains_on_its_content_only(tokenizer):
    """The template's header before a leading assistant turn is text the model is given, not text it writes."""
    messages = [
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
    ]
    [example], _ = tokenize_rows(Rows("mem", [{"messages": messages}]), DataConfig(), tokenizer)
    trained = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "Hello, how can I help?</s>\n4</s>\n"
    assert example.input_ids == ids(tokenizer, render_chat(messages, tokenizer, add_generation_prompt=False))


def test_an_empty_row_is_dropped_when_the_tokenizer_has_no_bos(tokenizer):
    no_bos = copy.deepcopy(tokenizer)
    no_bos.bos_token = None
    rows = Rows("mem", [{"text": "Ada counted 3 coins."}, {"text": ""}])
    examples, stats = tokenize_rows(rows, DataConfig(), no_bos)
    assert [e.index for e in examples] == [1] and stats.empty == 1
