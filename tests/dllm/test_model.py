"""The bidirectional Qwen2 dLLM, its tokenizer, padding helpers, and loading/saving (actors/dllm)."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, Qwen2ForCausalLM

from actors.dllm import (
    attention_inputs,
    build_model,
    build_tokenizer,
    completion_mask_from_ids,
    left_pad,
    save_model,
    train_tokenizer,
)
from actors.dllm.model import diffusion_logits
from tests.tiny_model import CONFIG, FIRST_ORDINARY_ID, TEXTS, VOCAB_SIZE, build_tiny, random_rows, tiny_spec


def test_tokenizer_round_trips_through_autotokenizer_with_mask_and_chat_template(tmp_path):
    tokenizer = train_tokenizer(TEXTS, vocab_size=VOCAB_SIZE)
    messages = [{"role": "user", "content": "add two numbers"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>user\nadd two numbers<|im_end|>\n<|im_start|>assistant\n")
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.mask_token == "<|mask|>" and reloaded.mask_token_id == tokenizer.mask_token_id
    assert reloaded.pad_token_id == reloaded.eos_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert reloaded(prompt)["input_ids"] == tokenizer(prompt)["input_ids"]
    assert reloaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == prompt
    for special in ("<|im_start|>", "<|im_end|>", "<|dlm_pad|>", "<|mask|>"):
        assert len(reloaded(special, add_special_tokens=False)["input_ids"]) == 1
    assert reloaded.decode(reloaded(TEXTS[0])["input_ids"]) == TEXTS[0]


def test_build_model_is_seeded_and_leaves_global_rng_untouched():
    state = torch.random.get_rng_state()
    first, tokenizer = build_model(tiny_spec())
    assert torch.equal(state, torch.random.get_rng_state())
    second, _ = build_model(tiny_spec())
    other, _ = build_model(tiny_spec(seed=1))
    assert first.config.vocab_size == len(tokenizer)
    assert first.config.mask_token_id == tokenizer.mask_token_id
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    assert not torch.equal(first.lm_head.weight, other.lm_head.weight)


def test_attention_is_bidirectional_unlike_the_causal_qwen2(tiny):
    model, tokenizer = tiny
    ids = torch.tensor(random_rows(tokenizer, [12]))
    changed = ids.clone()
    low = FIRST_ORDINARY_ID
    changed[0, -1] = (ids[0, -1] + 1 - low) % (len(tokenizer) - low) + low  # the next ordinary token
    mask = torch.ones_like(ids)
    with torch.no_grad():
        delta = (diffusion_logits(model, ids, mask) - diffusion_logits(model, changed, mask))[0, 0].abs().max()
        causal = Qwen2ForCausalLM(model.config).eval()
        causal.load_state_dict(model.state_dict())
        causal_delta = (causal(ids).logits - causal(changed).logits)[0, 0].abs().max()
    assert delta > 1e-4  # a later token changes the first position's logits
    assert causal_delta == 0  # ... which a causal decoder could never do


def test_left_pad_and_attention_inputs_give_positions_and_pairwise_mask():
    ids, mask = left_pad([[7, 8, 9], [5]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    positions, mask4d = attention_inputs(mask)
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert mask4d.shape == (2, 1, 3, 3) and mask4d[0].all()
    expected_row1 = [[True, False, False], [False, True, False], [False, False, True]]  # pads see only themselves
    assert mask4d[1, 0].tolist() == expected_row1


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_left_padding_does_not_change_a_rows_logits(tiny, implementation):
    model, tokenizer = tiny
    model.config._attn_implementation = implementation
    try:
        (long_row,), (short_row,) = random_rows(tokenizer, [10]), random_rows(tokenizer, [6], seed=1)
        ids, mask = left_pad([long_row, short_row], tokenizer.pad_token_id)
        with torch.no_grad():
            batched = diffusion_logits(model, ids, mask)
            alone = diffusion_logits(model, torch.tensor([short_row]), torch.ones(1, 6, dtype=torch.long))
    finally:
        model.config._attn_implementation = "sdpa"
    assert torch.isfinite(batched).all()
    assert torch.allclose(batched[1, 4:], alone[0], atol=1e-5)


def test_model_trains_in_bf16_with_gradient_checkpointing_and_finite_grads():
    model, tokenizer = build_tiny(dtype=torch.bfloat16)
    model.train()
    model.gradient_checkpointing_enable()
    ids, mask = left_pad([*random_rows(tokenizer, [9]), [11, 12, 13]], tokenizer.pad_token_id)
    logits = diffusion_logits(model, ids, mask)
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).mean().backward()
    grads = [param.grad for param in model.parameters()]
    assert all(grad is not None and torch.isfinite(grad).all() for grad in grads)
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_save_model_then_build_model_reloads_identically(tiny, tmp_path):
    model, tokenizer = tiny
    save_model(model, tokenizer, tmp_path)
    reloaded, reloaded_tokenizer = build_model(tmp_path)
    ids, mask = left_pad([[9, 10, 11, 12], [13, 14]], tokenizer.pad_token_id)
    with torch.no_grad():
        assert torch.equal(diffusion_logits(model, ids, mask), diffusion_logits(reloaded.eval(), ids, mask))
    assert reloaded.config.mask_token_id == reloaded_tokenizer.mask_token_id == tokenizer.mask_token_id
    assert reloaded_tokenizer.get_vocab() == tokenizer.get_vocab()


def write_dream_dir(model, tokenizer, path, slow_tokenizer_files=False):
    """A directory shaped like Dream/DiffuCoder: model_type "Dream", remote-code auto_map, Qwen2 key names."""
    path.mkdir(exist_ok=True)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, path / "model.safetensors")
    config = {
        "architectures": ["DreamModel"], "model_type": "Dream", "transformers_version": "4.46.2",
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        **CONFIG, "vocab_size": len(tokenizer), "mask_token_id": tokenizer.mask_token_id,
        "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id, "rope_theta": model.config.rope_parameters["rope_theta"], "rope_scaling": None, "rms_norm_eps": 1e-6,
        "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float32", "use_sliding_window": False,
        "sliding_window": None, "max_window_layers": 28, "attention_dropout": 0.0, "use_cache": True,
    }
    (path / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(path)
    if slow_tokenizer_files:  # Dream ships Qwen2's vocab.json + merges.txt instead of tokenizer.json
        tokenizer.backend_tokenizer.model.save(str(path))
        (path / "tokenizer.json").unlink()
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "DreamTokenizer"
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]}
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))


@pytest.mark.parametrize("slow_tokenizer_files", [False, True])
def test_dream_style_directory_loads_without_trust_remote_code(tmp_path, slow_tokenizer_files):
    model, tokenizer = build_tiny(rope_theta=1e6)  # DiffuCoder's theta
    model.eval()
    write_dream_dir(model, tokenizer, tmp_path / "dream", slow_tokenizer_files)
    loaded, loaded_tokenizer = build_model(tmp_path / "dream")
    ids = torch.tensor(random_rows(tokenizer, [8, 8]))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.equal(diffusion_logits(model, ids, mask), diffusion_logits(loaded.eval(), ids, mask))
    assert loaded_tokenizer.mask_token_id == tokenizer.mask_token_id
    assert loaded_tokenizer(TEXTS[1])["input_ids"] == tokenizer(TEXTS[1])["input_ids"]


def test_unknown_model_type_fails_with_a_one_line_message(tiny, tmp_path):
    model, tokenizer = tiny
    write_dream_dir(model, tokenizer, tmp_path / "llama")
    config = json.loads((tmp_path / "llama" / "config.json").read_text())
    (tmp_path / "llama" / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama'; accepted: qwen2, Dream"):
        build_model(tmp_path / "llama")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        build_model(tmp_path / "missing")


def test_build_tokenizer_trains_from_files(tmp_path):
    source = tmp_path / "corpus.py"
    source.write_text("\n".join(TEXTS))
    tokenizer = build_tokenizer({"train_files": [str(source)], "vocab_size": 300})
    assert tokenizer.mask_token_id is not None and len(tokenizer) <= 300
    with pytest.raises(ValueError, match="unknown keys"):
        build_tokenizer({"train_text": TEXTS})


def test_completion_mask_stops_after_the_first_end_token():
    completion = torch.tensor([[5, 6, 3, 7, 3], [5, 6, 7, 8, 9], [0, 5, 5, 5, 5]])
    mask = completion_mask_from_ids(completion, [3, 0])
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, True],
        [True, False, False, False, False],
    ]
