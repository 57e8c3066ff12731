"""LLaDA in pure torch (actors/dllm/llada.py) against a hand-written released-format directory.

The directory is written here by hand: a config.json with the released keys, a model.safetensors under the
released tensor names (`model.transformer.blocks.0.q_proj.weight`, ...) and a WordLevel tokenizer holding
`<|mdm_mask|>`. `reference_logits` is an independent, loop-per-head float64 forward of the released math
(RMSNorm, rotate-half RoPE, bidirectional softmax attention with grouped kv heads, SwiGLU, head, no shift).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from actors.dllm.llada import LladaConfig, LladaModel, is_llada_dir, load_llada, save_llada

WORDS = 240  # ids 0..239 are ordinary words
SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|eot_id|>", "<|mdm_mask|>"]  # ids 240..243
EOS_ID, MASK_ID = 241, 243
EMBEDDINGS = 256

RELEASED_CONFIG = {  # the released config.json's keys, at tiny sizes
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "auto_map": {
        "AutoConfig": "configuration_llada.LLaDAConfig",
        "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
        "AutoModel": "modeling_llada.LLaDAModelLM",
    },
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 32,
    "embedding_dropout": 0.0, "embedding_size": EMBEDDINGS, "eos_token_id": EOS_ID, "flash_attention": False,
    "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
    "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": MASK_ID, "max_sequence_length": 64, "mlp_hidden_size": 48,
    "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 4,
    "n_layers": 2, "pad_token_id": EOS_ID, "precision": "amp_bf16", "residual_dropout": 0.0,
    "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0,
    "scale_logits": False, "transformers_version": "4.46.3", "use_cache": False, "vocab_size": EMBEDDINGS,
    "weight_tying": False,
}


def released_tensors(cfg: dict, seed: int = 0, scale: float = 0.3) -> dict[str, torch.Tensor]:
    """Random float32 weights under the released names and shapes of `cfg`."""
    d, heads, kv_heads, ffn = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"], cfg["mlp_hidden_size"]
    kv = kv_heads * (d // heads)
    shapes = {"model.transformer.wte.weight": (cfg["embedding_size"], d), "model.transformer.ln_f.weight": (d,)}
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        shapes.update({
            p + "attn_norm.weight": (d,), p + "q_proj.weight": (d, d), p + "k_proj.weight": (kv, d),
            p + "v_proj.weight": (kv, d), p + "attn_out.weight": (d, d), p + "ff_norm.weight": (d,),
            p + "ff_proj.weight": (ffn, d), p + "up_proj.weight": (ffn, d), p + "ff_out.weight": (d, ffn),
        })
        if cfg["include_bias"]:
            shapes.update({
                p + "attn_norm.bias": (d,), p + "ff_norm.bias": (d,), p + "q_proj.bias": (d,), p + "k_proj.bias": (kv,),
                p + "v_proj.bias": (kv,), p + "attn_out.bias": (d,), p + "ff_proj.bias": (ffn,),
                p + "up_proj.bias": (ffn,), p + "ff_out.bias": (d,),
            })
    if cfg["include_bias"]:
        shapes["model.transformer.ln_f.bias"] = (d,)
    if not cfg["weight_tying"]:
        shapes["model.transformer.ff_out.weight"] = (cfg["embedding_size"], d)
        if cfg["include_bias"]:
            shapes["model.transformer.ff_out.bias"] = (cfg["embedding_size"],)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=generator)
        tensors[name] = 1 + 0.1 * noise if name.endswith("norm.weight") or "ln_f.weight" in name else scale * noise
    return tensors


def write_tokenizer(path) -> None:
    vocab = {f"w{i}": i for i in range(WORDS)} | {tok: WORDS + j for j, tok in enumerate(SPECIALS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
        additional_special_tokens=["<|eot_id|>", "<|mdm_mask|>"],
    )
    tokenizer.save_pretrained(str(path))


def write_llada_dir(path, seed: int = 0, shards: int = 1, **overrides) -> tuple[dict, dict]:
    """A released-format directory at `path`; returns (config dict, weights)."""
    cfg = {**RELEASED_CONFIG, **overrides}
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    tensors = released_tensors(cfg, seed)
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        names = list(tensors)
        weight_map = {}
        for s in range(shards):
            shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {name: tensors[name] for name in names[s::shards]}
            save_file(part, str(path / shard), metadata={"format": "pt"})
            weight_map.update({name: shard for name in part})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    write_tokenizer(path)
    return cfg, tensors


def reference_logits(cfg: dict, w: dict, ids: list[int]) -> torch.Tensor:
    """Independent float64 forward of one unpadded row -> [L, V]; row i is the prediction for token i."""
    w = {k: v.double() for k, v in w.items()}
    d, heads, kv_heads = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"]
    hd, eps, theta = d // heads, cfg["rms_norm_eps"], cfg["rope_theta"]
    length, half = len(ids), hd // 2

    def lin(x, name):
        return x @ w[name + ".weight"].T + w.get(name + ".bias", 0.0)

    def rms(x, name):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w[name + ".weight"] + w.get(name + ".bias", 0.0)

    def rope(x):  # x [L, hd]: pair (j, j + hd/2) turns by angle pos * theta^(-2j/hd)
        out = torch.empty_like(x)
        for pos in range(length):
            for j in range(half):
                angle = pos * theta ** (-2.0 * j / hd)
                c, s = math.cos(angle), math.sin(angle)
                out[pos, j] = x[pos, j] * c - x[pos, j + half] * s
                out[pos, j + half] = x[pos, j + half] * c + x[pos, j] * s
        return out

    x = w["model.transformer.wte.weight"][torch.tensor(ids)]
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        h = rms(x, p + "attn_norm")
        q, k, v = lin(h, p + "q_proj"), lin(h, p + "k_proj"), lin(h, p + "v_proj")
        outs = []
        for head in range(heads):
            g = head // (heads // kv_heads)  # the kv head this query head reads
            qh = rope(q[:, head * hd:(head + 1) * hd])
            kh = rope(k[:, g * hd:(g + 1) * hd])
            probs = torch.softmax(qh @ kh.T / math.sqrt(hd), dim=-1)  # every query sees every key
            outs.append(probs @ v[:, g * hd:(g + 1) * hd])
        x = x + lin(torch.cat(outs, dim=-1), p + "attn_out")
        h = rms(x, p + "ff_norm")
        gate, up = lin(h, p + "ff_proj"), lin(h, p + "up_proj")
        x = x + lin(gate * torch.sigmoid(gate) * up, p + "ff_out")
    x = rms(x, "model.transformer.ln_f")
    if cfg["weight_tying"]:
        return x @ w["model.transformer.wte.weight"].T
    return lin(x, "model.transformer.ff_out")


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llada")
    cfg, tensors = write_llada_dir(path)
    return path, cfg, tensors


@pytest.fixture(scope="module")
def loaded(llada_dir):
    model, tokenizer = load_llada(llada_dir[0])
    return model, tokenizer


def rows(seed: int, *lengths: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, WORDS, (n,), generator=generator).tolist() for n in lengths]


def test_load_gives_logits_mask_token_and_released_names(llada_dir, loaded):
    path, cfg, tensors = llada_dir
    model, tokenizer = loaded
    assert is_llada_dir(path) and not model.training
    assert set(model.state_dict()) == set(tensors)
    assert "model.transformer.blocks.1.up_proj.weight" in model.state_dict()
    assert model.mask_token_id == MASK_ID == tokenizer.mask_token_id
    assert tokenizer.mask_token == "<|mdm_mask|>" and tokenizer.convert_tokens_to_ids("<|eot_id|>") == 242
    assert tokenizer.pad_token_id == EOS_ID
    ids = torch.tensor(rows(0, 7, 7))
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, 7, EMBEDDINGS) and logits.dtype == torch.float32


@pytest.mark.parametrize(
    "overrides",
    [
        dict(n_layers=1, rope_theta=10000.0),
        dict(n_layers=1, n_kv_heads=2, rope_theta=10.0),
        dict(n_layers=1, n_kv_heads=1, include_bias=True, bias_for_layer_norm=None, weight_tying=True),
    ],
    ids=["mha", "gqa", "mqa-bias-tied"],
)
def test_forward_matches_hand_computed_reference(tmp_path, overrides):
    """RMSNorm, RoPE, attention (grouped kv), SwiGLU, head: logits row i is the released math at input i."""
    cfg, tensors = write_llada_dir(tmp_path, seed=3, **overrides)
    model, _ = load_llada(tmp_path)
    ids = rows(1, 9)[0]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    expected = reference_logits(cfg, tensors, ids)
    assert logits.shape == expected.shape == (9, EMBEDDINGS)  # one row per input position: no shift
    torch.testing.assert_close(logits.double(), expected, atol=1e-5, rtol=1e-5)


def test_attention_is_bidirectional(loaded):
    model, _ = loaded
    ids = torch.tensor(rows(2, 8))
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % WORDS
    with torch.no_grad():
        before, after = model(ids).logits, model(changed).logits
    assert not torch.allclose(before[0, 0], after[0, 0])  # the last token reaches the first position


def test_left_padding_invariance_with_unshifted_positions(loaded):
    """The release keeps positions 0..L-1 on padded rows; RoPE is relative and padded keys are invisible,
    so a row's real-position logits are the same alone and left-padded in a batch."""
    model, _ = loaded
    short, long = rows(4, 5, 9)
    ids = torch.tensor([[EOS_ID] * 4 + short, long])
    mask = torch.tensor([[0] * 4 + [1] * 5, [1] * 9])
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).logits
        alone_short = model(torch.tensor([short])).logits
        alone_long = model(torch.tensor([long]), attention_mask=torch.ones(1, 9, dtype=torch.long)).logits
        shifted = model(ids, attention_mask=mask, position_ids=torch.arange(9)[None] + 11).logits
        other_pad = model(ids.masked_fill(mask == 0, 7), attention_mask=mask).logits
    torch.testing.assert_close(batch[0, 4:], alone_short[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch[1], alone_long[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shifted, batch, atol=1e-5, rtol=1e-5)  # only position differences matter
    torch.testing.assert_close(other_pad[0, 4:], batch[0, 4:], atol=1e-6, rtol=1e-6)  # padding is unseen
    assert torch.isfinite(batch).all()
    with pytest.raises(ValueError, match="only 0"):
        model(ids, attention_mask=mask * 2)


def test_save_load_round_trip_is_exact(tmp_path, loaded):
    model, tokenizer = loaded
    saved = save_llada(model, tokenizer, tmp_path / "copy")
    written = json.loads((saved / "config.json").read_text())
    assert written["model_type"] == "llada" and written["architectures"] == ["LLaDAModelLM"]
    assert {k: written[k] for k in RELEASED_CONFIG} == RELEASED_CONFIG  # released keys, values, auto_map kept
    again, tokenizer2 = load_llada(saved)
    ids = torch.tensor(rows(5, 6, 6))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert tokenizer2.mask_token_id == MASK_ID and is_llada_dir(saved)


def test_sharded_index_loads_the_same_weights(tmp_path, loaded):
    write_llada_dir(tmp_path, shards=3)
    sharded, _ = load_llada(tmp_path)
    ids = torch.tensor(rows(6, 7))
    with torch.no_grad():
        assert torch.equal(sharded(ids).logits, loaded[0](ids).logits)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.transformer.blocks.9.q_proj.weight"] = "model-00001-of-00003.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="no shard holds"):
        load_llada(tmp_path)


@pytest.mark.parametrize("change", ["rename", "drop", "reshape"])
def test_wrong_or_missing_weights_give_one_clear_error(tmp_path, change):
    _, tensors = write_llada_dir(tmp_path)
    key = "model.transformer.blocks.0.q_proj.weight"
    if change == "rename":
        tensors["model.transformer.blocks.0.query.weight"] = tensors.pop(key)
    elif change == "drop":
        del tensors[key]
    else:
        tensors[key] = tensors[key][:, :-1].contiguous()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as error:
        load_llada(tmp_path)
    message = str(error.value)
    assert key in message
    assert ("unexpected" in message and "query.weight" in message) == (change == "rename")
    assert ("wrong shapes" in message) == (change == "reshape")


def test_bf16_load(llada_dir, loaded):
    model, _ = load_llada(llada_dir[0], dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids = torch.tensor(rows(7, 6, 6))
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6])
    with torch.no_grad():
        half = model(ids, attention_mask=mask).logits
        full = loaded[0](ids, attention_mask=mask).logits
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    assert (half.float() - full).abs().max() < 0.05 * full.abs().max()


def test_config_validation_and_round_trip():
    config = LladaConfig.from_dict(RELEASED_CONFIG)
    assert config.effective_n_kv_heads == 4 and config.ffn_hidden_size == 48 and config.init_fn == "mitchell"
    assert config.extra == {"auto_map": RELEASED_CONFIG["auto_map"], "transformers_version": "4.46.3"}
    assert LladaConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["auto_map"] == RELEASED_CONFIG["auto_map"]
    for bad, key in [
        ({"block_type": "sequential"}, "block_type"), ({"layer_norm_type": "default"}, "layer_norm_type"),
        ({"model_type": "qwen2"}, "model_type"), ({"n_kv_heads": 3}, "n_kv_heads"),
        ({"rope_theta": "big"}, "rope_theta"), ({"embedding_size": 100}, "embedding_size"),
    ]:
        with pytest.raises(ValueError, match=key):
            LladaConfig.from_dict({**RELEASED_CONFIG, **bad})
    with pytest.raises(ValueError, match="d_model"):
        LladaConfig.from_dict({k: v for k, v in RELEASED_CONFIG.items() if k != "d_model"})


def test_state_dict_names_of_a_fresh_model_are_the_released_ones():
    config = LladaConfig.from_dict({**RELEASED_CONFIG, "n_layers": 1})
    names = set(LladaModel(config).state_dict())
    assert names == set(released_tensors({**RELEASED_CONFIG, "n_layers": 1}))


def test_tokenizer_mask_id_must_agree_with_config(tmp_path):
    write_llada_dir(tmp_path, mask_token_id=242)
    with pytest.raises(ValueError, match="mdm_mask"):
        load_llada(tmp_path)


def test_is_llada_dir(tmp_path):
    assert not is_llada_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    assert not is_llada_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LLaDAModelLM"]}))
    assert is_llada_dir(tmp_path)
