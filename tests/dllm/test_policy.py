"""actors.policy: family detection, each family's head alignment, and the shared estimators on LLaDA."""
import json

import pytest
import torch

from actors.dllm import save_model
from actors.dllm.estimators import token_scores as dream_token_scores
from actors.dllm import DecoderSettings
from actors.dllm.llada import save_llada
from actors.dllm.llada_decoding import decode_llada
from actors.policy import CausalPolicy, DreamPolicy, LladaPolicy, family_of, policy_for
from tests.tiny_model import build_tiny, random_rows, tiny_llada


@pytest.fixture(scope="module")
def llada():
    _, tokenizer = build_tiny()
    return tiny_llada(tokenizer), tokenizer


def batch(tokenizer, prompt_lengths, completion_len, seed=0):
    """Left-padded prompt ++ completion rows: (input_ids, attention_mask, completion_mask)."""
    rows = random_rows(tokenizer, [p + completion_len for p in prompt_lengths], seed=seed)
    width = max(len(r) for r in rows)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask, torch.ones(len(rows), completion_len, dtype=torch.long)


def test_family_of_reads_config_json(tmp_path, llada):
    model, tokenizer = llada
    save_llada(model, tokenizer, tmp_path / "llada")
    dream, dream_tokenizer = build_tiny()
    save_model(dream, dream_tokenizer, tmp_path / "dream")
    assert family_of(tmp_path / "llada") == "llada" and family_of(tmp_path / "dream") == "dream"
    assert isinstance(policy_for(tmp_path / "llada"), LladaPolicy) and isinstance(policy_for("dream"), DreamPolicy)
    causal = tmp_path / "causal"
    causal.mkdir()
    (causal / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    assert family_of(causal) == "causal" and isinstance(policy_for(causal), CausalPolicy)
    with pytest.raises(FileNotFoundError, match="config.json"):
        family_of(tmp_path)


def test_a_policy_reloads_what_it_saved(tmp_path, llada):
    model, tokenizer = llada
    policy = policy_for("llada")
    policy.save(model, tokenizer, tmp_path / "m")
    again, again_tokenizer = policy.load(tmp_path / "m")
    ids, mask, completion_mask = batch(tokenizer, (5, 3), 6)
    with torch.no_grad():
        assert torch.equal(policy.completion_logits(model, ids, mask, 6), policy.completion_logits(again, ids, mask, 6))
    assert again_tokenizer.mask_token_id == tokenizer.mask_token_id == policy.mask_id(again)


def test_llada_has_no_shift_and_dream_has_one(llada):
    model, tokenizer = llada
    dream, _ = build_tiny()
    ids, mask, _ = batch(tokenizer, (6,), 5)  # one unpadded row: the release's positions
    with torch.no_grad():
        full = model(input_ids=ids).logits
        assert torch.equal(LladaPolicy().completion_logits(model, ids, mask, 5), full[:, -5:])
        dream_full = dream(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(DreamPolicy().completion_logits(dream, ids, mask, 5), dream_full[:, -6:-1])


def test_llada_scores_match_a_hand_computation(llada):
    """d1: log p of each completion token at its own position, completion fully masked; coupled: (full + the
    partial pass that masks the token, weighted) / 2 — both read at position i for token i."""
    model, tokenizer = llada
    policy = LladaPolicy()
    ids, mask, completion_mask = batch(tokenizer, (6,), 8, seed=3)
    mask_id = tokenizer.mask_token_id
    with torch.no_grad():
        d1 = policy.token_scores(model, ids, mask, completion_mask, estimator="d1", seed=4)
        fed = ids.clone()
        fed[:, -8:] = mask_id
        fed[:, :-8] = fed[:, :-8].masked_fill(d1.prompt_mask, mask_id)
        expected = torch.log_softmax(model(input_ids=fed).logits[:, -8:].float(), -1).gather(-1, ids[:, -8:, None])
        torch.testing.assert_close(d1.scores, expected.squeeze(-1))

        coupled = policy.token_scores(model, ids, mask, completion_mask, estimator="coupled", seed=4)
        logp = []
        for masked in coupled.masks:
            row = ids.clone()
            row[:, -8:] = row[:, -8:].masked_fill(masked, mask_id)
            logp.append(torch.log_softmax(model(input_ids=row).logits[:, -8:].float(), -1)
                        .gather(-1, ids[:, -8:, None]).squeeze(-1))
        t = coupled.t
        by_hand = (logp[0] + torch.where(coupled.masks[1], logp[1] / t, logp[2] / (1 - t))) / 2
        torch.testing.assert_close(coupled.scores, by_hand)


def test_llada_coupled_estimator_has_lower_variance_than_decoupled(llada):
    model, tokenizer = llada
    policy = LladaPolicy()
    ids, mask, completion_mask = batch(tokenizer, (6, 4), 16, seed=5)
    totals = {"coupled": [], "decoupled": []}
    with torch.no_grad():
        for seed in range(150):
            for estimator, values in totals.items():
                values.append(policy.token_scores(model, ids, mask, completion_mask, estimator=estimator,
                                                  seed=seed).scores.sum())
    coupled, decoupled = torch.stack(totals["coupled"]).var(), torch.stack(totals["decoupled"]).var()
    assert coupled < decoupled


def test_llada_scores_of_a_row_do_not_depend_on_its_padding_or_batch(llada):
    model, tokenizer = llada
    policy = LladaPolicy()
    ids, mask, completion_mask = batch(tokenizer, (9, 3), 6, seed=7)
    with torch.no_grad():
        together = policy.token_scores(model, ids, mask, completion_mask, estimator="coupled", seed=[11, 12])
        short = ids[1:, mask[1].argmax():]  # the second row without its left padding
        alone = policy.token_scores(model, short, torch.ones_like(short), completion_mask[1:], estimator="coupled",
                                    seed=[12])
    torch.testing.assert_close(together.scores[1:], alone.scores, atol=1e-5, rtol=1e-5)


def test_scores_carry_gradients_and_dream_scores_are_unchanged_through_the_policy():
    model, tokenizer = build_tiny()
    ids, mask, completion_mask = batch(tokenizer, (5, 7), 4)
    through = DreamPolicy().token_scores(model, ids, mask, completion_mask, estimator="coupled", seed=2)
    direct = dream_token_scores(model, ids, mask, completion_mask, estimator="coupled", seed=2)
    assert torch.equal(through.scores, direct.scores)
    llada_model = tiny_llada(tokenizer).train()
    scores = LladaPolicy().token_scores(llada_model, ids, mask, completion_mask, estimator="d1", seed=1).scores
    scores.sum().backward()
    assert llada_model.model.transformer.wte.weight.grad.abs().sum() > 0


LLADA_SETTINGS = DecoderSettings(decoder="reference", max_new_tokens=8, steps=8, alg="maskgit_plus", top_p=None,
                                 block_length=4)


def test_llada_decodes_through_the_policy_into_a_generate_result(llada):
    model, tokenizer = llada
    prompts = random_rows(tokenizer, [5, 9, 3], seed=2)
    out = LladaPolicy().decode(model, tokenizer, prompts, LLADA_SETTINGS, temperature=0.0, seeds=[1, 2, 3])
    assert out.completion_ids.shape == (3, 8) and out.sequences.shape == (3, 9 + 8) and len(out.texts) == 3
    assert out.forwards == 8 and out.row_forwards == [8, 8, 8]
    # generate.py's schedule: 2 blocks of 4 positions in 4 steps each, one token per step, block by block
    for row in out.order.tolist():
        assert sorted(row) == list(range(8)) and max(row[:4]) < min(row[4:])
    # positions from the padding mask: a row decodes the same alone as in the left-padded batch (T = 0)
    for i, prompt in enumerate(prompts):
        alone = decode_llada(model, tokenizer, [prompt], LLADA_SETTINGS, temperature=0.0, seeds=[i + 1])
        assert torch.equal(alone.completion_ids[0], out.completion_ids[i])


def test_llada_sampling_is_seeded_by_the_rows_seeds(llada):
    model, tokenizer = llada
    prompts = random_rows(tokenizer, [5, 5], seed=4)
    settings = DecoderSettings(decoder="reference", max_new_tokens=8, steps=8, alg="origin", top_p=1.0)
    runs = [decode_llada(model, tokenizer, prompts, settings, temperature=1.0, seeds=seeds).completion_ids
            for seeds in ([7, 8], [7, 8], [7, 9])]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("change, message", [
    (dict(alg="entropy"), "alg 'entropy'"), (dict(top_p=0.95), "top_p"), (dict(steps=3), "steps 3"),
])
def test_what_llada_s_decoder_cannot_do_is_one_clear_error(llada, change, message):
    model, tokenizer = llada
    settings = DecoderSettings(**{**LLADA_SETTINGS.__dict__, **change})
    with pytest.raises(ValueError, match=message):
        LladaPolicy().check_settings(settings)
    DreamPolicy().check_settings(DecoderSettings(**{**settings.__dict__, "block_length": None}))  # Dream takes these


def test_blocks_of_the_reference_decoder_are_llada_s_only():
    settings = DecoderSettings(max_new_tokens=8, steps=8, alg="maskgit_plus", top_p=1.0, block_length=3)
    with pytest.raises(ValueError, match="block_length 3"):  # generate.py's blocks must divide the canvas
        LladaPolicy().check_settings(settings)
    LladaPolicy().check_settings(DecoderSettings(**{**settings.__dict__, "block_length": 4}))
    with pytest.raises(ValueError, match="blocks are for decoder=fast"):  # the paper's decoder has none
        DreamPolicy().check_settings(settings)
    DreamPolicy().check_settings(DecoderSettings(**{**settings.__dict__, "decoder": "fast"}))


def test_the_tiny_families_tokenize_alike_after_a_reload(tmp_path):
    """The tiny LLaDA's BPE gets Qwen2's pre-tokenization (digits one by one), what the tiny Dream's directory is
    reloaded with, so both families read the demo's constants token for token (a warm start copies them)."""
    from tests.tiny_model import tiny_spec

    texts = ["def f(x):\n    return x * 217 + 10", "assert f(3) == 661", "  s + 'cup'\t# 4.5e3"]
    ids = {}
    for family in ("dream", "llada"):
        policy = policy_for(family)
        model, tokenizer = policy.build_tiny(tiny_spec())
        policy.save(model, tokenizer, tmp_path / family)
        _, again = policy.load(tmp_path / family)
        ids[family] = [again(t, add_special_tokens=False)["input_ids"] for t in texts]
        if family == "llada":  # set in memory and kept by the reload (the tiny Dream gets it from the reload only)
            assert ids[family] == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert ids["dream"] == ids["llada"]
    digits = [again.decode([i]) for i in ids["llada"][1]]
    assert "6" in digits and "661" not in digits
