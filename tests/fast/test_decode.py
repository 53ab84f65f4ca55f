"""tunekit's own decoding loop: the tokens of ``generate``, each prompt prefilled once, packed weights that compute
the layers' own function, and a sampler that draws from the distribution transformers' warpers define."""

import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from tunekit.fast.decode import decode, decode_turn, lean_decoder
from tunekit.fast.packed_decode import packed_linears
from tunekit.fast.sampling import Sampler
from tunekit.models.adapters import AdapterConfig, apply_adapter
from tunekit.models.load import ModelConfig, load_model
from tunekit.models.tiny import tiny_model_path

GROUP, NEW = 3, 10


def prompts(tokenizer):
    """[P, W] left-padded ids and mask of three prompts of different lengths."""
    texts = ["What is 3 plus 4?", "Name a colour.", "Count from one to five, please, slowly."]
    encoded = [[tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens) :] = torch.tensor(tokens)
        mask[row, width - len(tokens) :] = 1
    return ids, mask


def adapted(name, method="lora"):
    """A tiny model with a LoRA (or other) adapter whose weights are moved off their zero start."""
    model = apply_adapter(load_model(ModelConfig(path=str(tiny_model_path(name)))), AdapterConfig(method=method))
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.2)
    return model.eval()


def greedy_generate(model, tokenizer, ids, mask):
    with torch.no_grad():
        out = model.generate(
            input_ids=ids.repeat_interleave(GROUP, dim=0),
            attention_mask=mask.repeat_interleave(GROUP, dim=0),
            max_new_tokens=NEW,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=None,
        )
    return out[:, ids.shape[1] :]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-mistral"])
def test_greedy_tokens_equal_generate(name, tokenizer):
    model = adapted(name)
    ids, mask = prompts(tokenizer)
    lean = lean_decoder(model, ids.shape[1] + NEW)
    assert lean is not None
    ours = decode(lean, ids, mask, GROUP, NEW, Sampler(temperature=0), (), tokenizer.pad_token_id)
    assert ours.shape == (ids.shape[0] * GROUP, NEW)
    assert torch.equal(ours, greedy_generate(model, tokenizer, ids, mask))


def test_packed_weights_compute_each_layer_as_its_module(tokenizer):
    model = adapted("tiny-llama")
    table = packed_linears(lean_decoder(model, 64), rows=6)
    hf = model.get_base_model()
    # Per layer: q, k and v as one matrix, o, gate and up as one, down; then the head.
    assert len(table) == 4 * hf.config.num_hidden_layers + 1
    assert sum(len(modules) for modules in table) == 7 * hf.config.num_hidden_layers + 1
    torch.manual_seed(0)
    for modules, project in table.items():
        x = torch.randn(6, modules[0].in_features)
        with torch.no_grad():
            for packed, module in zip(project(x), modules, strict=True):
                torch.testing.assert_close(packed, module(x), atol=2e-5, rtol=1e-4)


def test_packed_decoding_gives_generate_logits(tokenizer):
    """With the LoRA update merged into packed weights, the next-token distribution stays the model's own."""
    model = adapted("tiny-llama")
    ids, mask = prompts(tokenizer)
    lean = lean_decoder(model, ids.shape[1] + NEW)
    rows = ids.shape[0] * GROUP
    tokens = decode(
        lean,
        ids,
        mask,
        GROUP,
        NEW,
        Sampler(temperature=0),
        (),
        tokenizer.pad_token_id,
        None,
        packed_linears(lean, rows),
    )
    full_ids = torch.cat([ids.repeat_interleave(GROUP, dim=0), tokens], dim=1)
    full_mask = torch.cat([mask.repeat_interleave(GROUP, dim=0), torch.ones_like(tokens)], dim=1)
    with torch.no_grad():
        logits = model(
            input_ids=full_ids, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)
        ).logits
    # Each greedy token is the argmax of the model's own logits at its position (up to a near-tie).
    chosen = logits[:, ids.shape[1] - 1 : -1].gather(-1, tokens[..., None])[..., 0]
    assert (logits[:, ids.shape[1] - 1 : -1].max(dim=-1).values - chosen).max() < 1e-4


def test_dora_layers_keep_their_own_forward():
    model = apply_adapter(load_model(ModelConfig()), AdapterConfig(method="dora")).eval()
    table = packed_linears(lean_decoder(model, 64), rows=4)
    assert list(table) == [(model.get_base_model().lm_head,)]  # only the plain head is packed


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "llama_adapter"])
def test_prompt_methods_go_through_generate(method):
    assert lean_decoder(adapted("tiny-llama", method), 64) is None


def test_a_sliding_window_shorter_than_the_rollout_goes_through_generate():
    model = adapted("tiny-mistral")
    window = model.get_base_model().config.sliding_window
    assert lean_decoder(model, window) is not None
    assert lean_decoder(model, window + 1) is None


def test_finished_rows_pad_and_decoding_stops_when_all_have_finished(tokenizer):
    model = adapted("tiny-llama")
    ids, mask = prompts(tokenizer)
    lean = lean_decoder(model, ids.shape[1] + NEW)
    pad = tokenizer.pad_token_id
    free = decode(lean, ids, mask, GROUP, NEW, Sampler(temperature=0), (), pad)
    # Make the second greedy token of prompt 0 the "EOS": its rows end there and pad after it.
    eos = free[0, 1].item()
    ended = decode(lean, ids, mask, GROUP, NEW, Sampler(temperature=0), [eos], pad)
    for row in range(free.shape[0]):
        tokens = free[row].tolist()
        cut = tokens.index(eos) + 1 if eos in tokens else len(tokens)
        assert ended[row, :cut].tolist() == tokens[:cut]
        assert (ended[row, cut:] == pad).all()
    # A stop check that ends every row after three tokens ends decoding after three steps.
    stopped = decode(lean, ids, mask, GROUP, NEW, Sampler(temperature=0), (), pad, lambda t: len(t) >= 3)
    assert torch.equal(stopped, free[:, :3])


def test_greedy_sampler_takes_the_argmax():
    logits = torch.randn(5, 50)
    assert torch.equal(Sampler(temperature=0)(logits), logits.argmax(-1))


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (5, 1.0), (0, 0.6), (8, 0.8)])
def test_sampler_draws_from_transformers_warped_distribution(top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(1, 40) * 2
    temperature = 0.7
    warped = logits / temperature
    if top_k:
        warped = TopKLogitsWarper(top_k)(None, warped)
    if top_p < 1:
        warped = TopPLogitsWarper(top_p)(None, warped)
    expected = warped.softmax(-1)[0]
    draws = 40_000
    sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p)
    tokens = sampler(logits.expand(draws, -1))
    counts = torch.bincount(tokens, minlength=40).float() / draws
    assert (counts[expected == 0] == 0).all()  # never a token the warpers remove
    torch.testing.assert_close(counts, expected, atol=0.01, rtol=0)


def test_sharded_weights_go_through_generate():
    """ZeRO-3 marks its partitioned parameters with ds_id; their gathering hooks sit on modules the loop bypasses."""
    model = adapted("tiny-llama")
    assert lean_decoder(model, 64) is not None
    next(model.parameters()).ds_id = 0
    assert lean_decoder(model, 64) is None


def test_qwen2_biased_projections(tokenizer):
    """Qwen2's q, k and v carry biases: the loop and the packed matrices must add them."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # random init leaves the biases at zero
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    ids, mask = prompts(tokenizer)
    lean = lean_decoder(model, ids.shape[1] + NEW)
    assert lean is model
    ours = decode(lean, ids, mask, GROUP, NEW, Sampler(temperature=0), (), tokenizer.pad_token_id)
    assert torch.equal(ours, greedy_generate(model, tokenizer, ids, mask))
    first = model.model.layers[0].self_attn
    project = packed_linears(lean, rows=4)[(first.q_proj, first.k_proj, first.v_proj)]
    x = torch.randn(4, 64)
    with torch.no_grad():
        for packed, module in zip(project(x), (first.q_proj, first.k_proj, first.v_proj), strict=True):
            torch.testing.assert_close(packed, module(x), atol=2e-5, rtol=1e-4)


def test_no_packed_copies_when_memory_is_short(monkeypatch):
    import psutil

    model = adapted("tiny-llama")
    lean = lean_decoder(model, 64)
    assert packed_linears(lean, rows=4)
    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=1_000_000))
    assert packed_linears(lean, rows=4) == {}


def test_generate_fallback_ignores_the_checkpoints_generation_config(tokenizer):
    """Settings a checkpoint ships in generation_config.json would make the fallback's samples differ from the
    policy's distribution (and from the lean loop's): they are set aside for the rollout, then restored."""
    from tunekit.rl.rollout import SamplingConfig, generate_with_transformers

    model = adapted("tiny-llama")
    ids, mask = prompts(tokenizer)
    sampling = SamplingConfig(num_generations=GROUP, max_new_tokens=NEW, temperature=0.0)
    expected = greedy_generate(model, tokenizer, ids, mask)
    config = model.get_base_model().generation_config
    config.suppress_tokens = sorted(set(expected[:, 0].tolist()))  # would forbid every greedy first token
    config.repetition_penalty = 5.0
    got = generate_with_transformers(model, tokenizer, ids, mask, GROUP, sampling, [tokenizer.eos_token_id])
    # The fallback stops a row at EOS (greedy_generate does not): compare each row up to its first EOS.
    ended = (expected == tokenizer.eos_token_id).long().cumsum(-1)
    upto = (ended == 0) | ((ended == 1) & (expected == tokenizer.eos_token_id))
    assert torch.equal(got[:, : expected.shape[1]][upto], expected[upto])
    assert model.get_base_model().generation_config is config and config.repetition_penalty == 5.0


def trimmed(ids, mask, rows):
    """Rows ``rows`` of a left-padded batch, without the padding columns none of them needs."""
    ids, mask = ids[rows], mask[rows]
    first = int(mask.sum(0).nonzero()[0])
    return ids[:, first:], mask[:, first:]


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_compiled_steps_give_eager_tokens_and_compile_once_per_row_count(method, tokenizer):
    """LoRA's steps run on packed weights through tunekit's op, DoRA's through its own modules."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = adapted("tiny-llama", method)
    ids, mask = prompts(tokenizer)
    graphs = []
    # Two rows, then two rows of another prompt width, then one row, then the first two rows again.
    for rows in ([0, 1], [0, 2], [1], [1, 0]):
        p_ids, p_mask = trimmed(ids, mask, rows)
        lean = lean_decoder(model, p_ids.shape[1] + NEW)
        table = packed_linears(lean, len(rows) * GROUP)
        packed_adapters = [m for modules in table for m in modules if type(m) is not torch.nn.Linear]
        assert bool(packed_adapters) == (method == "lora")  # DoRA: only the output head is packed
        args = (lean, p_ids, p_mask, GROUP, NEW, Sampler(temperature=0), (), tokenizer.pad_token_id, None, table)
        assert torch.equal(decode(*args, compiled=True), decode(*args)), rows
        graphs.append(counters["stats"]["unique_graphs"])
    assert trimmed(ids, mask, [0, 1])[0].shape[1] != trimmed(ids, mask, [0, 2])[0].shape[1]
    assert graphs[0] > 0
    assert graphs[1] == graphs[0]  # a new prompt width: no new graph
    assert graphs[3] == graphs[2]  # back to a row count seen before: no new graph


class Recording:
    """Greedy, keeping the logits of every step: [N, V] each."""

    def __init__(self):
        self.logits = []

    def __call__(self, logits):
        self.logits.append(logits.clone())
        return logits.argmax(dim=-1)


def left_pad(rows, pad):
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-mistral"])
def test_a_turn_that_goes_on_from_the_kv_context_equals_one_that_reads_it_all_again(name, tokenizer):
    # Turn 1: three prompts, two completions each, cut to ragged kept lengths (as a rollout cuts at EOS). Turn 2
    # for rows 4, 0 and 3: new tokens of different lengths after each row's kept context. Going on from the cache
    # must give the logits of prefilling prompt + kept tokens + new tokens from scratch.
    model = adapted(name)
    pad = tokenizer.pad_token_id
    ids, mask = prompts(tokenizer)
    lean = lean_decoder(model, 64)
    first, context = decode_turn(lean, ids, mask, 2, NEW, Sampler(temperature=0), (), pad)
    kept = torch.tensor([10, 4, 7, 10, 1, 6])
    context = context.keep(kept)
    chosen = [4, 0, 3]
    after = [[17, 23, 5], [9], [40, 41, 42, 43, 44]]
    suffix_ids, suffix_mask = left_pad(after, pad)
    resumed = Recording()
    ours, _ = decode_turn(
        lean, suffix_ids, suffix_mask, 1, 6, resumed, (), pad, past=context.rows(torch.tensor(chosen))
    )
    whole = []
    for row, extra in zip(chosen, after, strict=True):
        prompt = ids[row // 2][mask[row // 2].bool()].tolist()
        whole.append(prompt + first[row, : kept[row]].tolist() + extra)
    whole_ids, whole_mask = left_pad(whole, pad)
    again = Recording()
    reference = decode(lean, whole_ids, whole_mask, 1, 6, again, (), pad)
    assert torch.equal(ours, reference)
    for step, (a, b) in enumerate(zip(resumed.logits, again.logits, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"step {step}")
