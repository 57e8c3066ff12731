"""Per-token score estimators: coupled, decoupled and d1 (ALGORITHM.md section 4)."""

import pytest
import torch

from actors.dllm import left_pad, token_scores
from actors.dllm.estimators import ESTIMATORS
from actors.dllm.model import diffusion_logits
from tests.dllm.fakes import Oracle, Recorder
from tests.tiny_model import random_rows

K = 8


def batch(tokenizer, prompt_lengths=(6, 3), completion_len=K, seed=0):
    """Random prompts of the given lengths ++ random completions, left-padded
    -> (input_ids [B, L], attention_mask [B, L], completion_mask [B, K], all True)."""
    rows = random_rows(tokenizer, [n + completion_len for n in prompt_lengths], seed)
    return *left_pad(rows, tokenizer.pad_token_id), torch.ones(len(rows), completion_len, dtype=torch.bool)


def test_coupled_masks_are_complementary_and_cover_each_token_once(tiny):
    model, tokenizer = tiny
    ids, mask, completion_mask = batch(tokenizer)
    result = token_scores(model, ids, mask, completion_mask, estimator="coupled", seed=11)
    full, masked_t, complement = result.masks
    assert full.all()
    assert (masked_t ^ complement).all() and not (masked_t & complement).any()
    assert 0.2 <= result.t <= 0.8
    assert result.weights == pytest.approx((1.0, 1 / result.t, 1 / (1 - result.t)))


@pytest.mark.parametrize("estimator", ["coupled", "decoupled"])
def test_prompt_is_never_masked_and_masked_inputs_match_masks(tiny, estimator):
    model, tokenizer = tiny
    ids, mask, completion_mask = batch(tokenizer)
    recorder = Recorder(model)
    result = token_scores(recorder, ids, mask, completion_mask, estimator=estimator, seed=4)
    (fed,) = recorder.inputs  # a single forward over all passes
    assert fed.shape == (3 * 2, ids.shape[1])
    for index, completion_masked in enumerate(result.masks):
        rows = fed[2 * index: 2 * index + 2]
        assert torch.equal(rows[:, :-K], ids[:, :-K])  # prompt and its padding untouched
        assert torch.equal(rows[:, -K:] == tokenizer.mask_token_id, completion_masked)
        assert torch.equal(rows[:, -K:][~completion_masked], ids[:, -K:][~completion_masked])


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_same_seed_gives_same_masks_and_scores_and_another_seed_differs(tiny, estimator):
    model, tokenizer = tiny
    ids, mask, completion_mask = batch(tokenizer)
    with torch.no_grad():
        first = token_scores(model, ids, mask, completion_mask, estimator=estimator, seed=7)
        again = token_scores(model, ids, mask, completion_mask, estimator=estimator, seed=7)
        other = token_scores(model, ids, mask, completion_mask, estimator=estimator, seed=8)
    assert torch.equal(first.scores, again.scores) and first.t == again.t
    assert all(torch.equal(a, b) for a, b in zip(first.masks, again.masks))
    assert not torch.equal(first.scores, other.scores)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_scores_match_a_hand_computation_from_logits_and_masks(tiny, estimator):
    model, tokenizer = tiny
    ids, mask, completion_mask = batch(tokenizer)
    with torch.no_grad():
        result = token_scores(model, ids, mask, completion_mask, estimator=estimator, seed=3)
        log_probs = []
        for completion_masked in result.masks:  # one separate forward per pass, full-length logits
            noisy = ids.clone()
            noisy[:, -K:][completion_masked] = tokenizer.mask_token_id
            if result.prompt_mask is not None:
                noisy[:, :-K][result.prompt_mask] = tokenizer.mask_token_id
            logits = diffusion_logits(model, noisy, mask)  # [B, L, V]
            predicted = torch.log_softmax(logits, -1)[:, -K - 1: -1]  # position i-1 predicts token i
            log_probs.append(predicted.gather(-1, ids[:, -K:, None]).squeeze(-1))
    if estimator == "d1":
        expected = log_probs[0]
    else:
        t = result.t
        expected = (log_probs[0] + result.masks[1] * log_probs[1] / t + result.masks[2] * log_probs[2] / (1 - t)) / 2
    assert torch.allclose(result.scores, expected, atol=1e-5)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_shifted_head_oracle_scores_maximal_and_off_by_one_does_not(tiny, estimator):
    _, tokenizer = tiny
    ids, mask, completion_mask = batch(tokenizer)
    for shift in (1, 0):
        oracle = Oracle(ids, len(tokenizer), tokenizer.mask_token_id, shift)
        scores = token_scores(oracle, ids, mask, completion_mask, estimator=estimator, seed=1).scores
        if shift == 1:
            assert scores.min() > -1e-3  # log-prob ~ 0: every completion token predicted perfectly
        else:
            assert scores.max() < -5


def test_coupled_estimator_has_lower_variance_than_decoupled_at_equal_passes(tiny):
    model, tokenizer = tiny
    ids, mask, completion_mask = batch(tokenizer, prompt_lengths=(6, 4), completion_len=16, seed=5)
    totals = {"coupled": [], "decoupled": []}
    with torch.no_grad():
        for seed in range(200):
            for estimator, values in totals.items():
                values.append(token_scores(model, ids, mask, completion_mask, estimator=estimator, seed=seed).scores.sum())
    coupled, decoupled = torch.stack(totals["coupled"]).var(), torch.stack(totals["decoupled"]).var()
    print(f"var(sum coupled) / var(sum decoupled) over 200 seeds = {float(coupled / decoupled):.3f}")
    assert coupled < decoupled


def test_d1_masks_the_whole_completion_and_only_real_prompt_tokens_at_rate_0_15(tiny):
    model, tokenizer = tiny
    ids, mask, completion_mask = batch(tokenizer, prompt_lengths=(40, 10), completion_len=4)
    prompt_real = mask[:, :-4].bool()
    masked, total = 0, 0
    with torch.no_grad():
        for seed in range(40):
            recorder = Recorder(model)
            result = token_scores(recorder, ids, mask, completion_mask, estimator="d1", seed=seed)
            (fed,) = recorder.inputs
            assert fed.shape == ids.shape and (fed[:, -4:] == tokenizer.mask_token_id).all()
            assert not (result.prompt_mask & ~prompt_real).any()
            assert torch.equal(fed[:, :-4] == tokenizer.mask_token_id, result.prompt_mask)
            masked, total = masked + int(result.prompt_mask.sum()), total + int(prompt_real.sum())
    assert 0.11 < masked / total < 0.19


def test_padding_of_other_rows_does_not_change_a_rows_scores(tiny):
    model, tokenizer = tiny
    short, long = random_rows(tokenizer, (4 + K, 12 + K), seed=2)
    completion_mask = torch.ones(2, K, dtype=torch.bool)
    with torch.no_grad():
        padded = token_scores(model, *left_pad([short, long], tokenizer.pad_token_id), completion_mask, seed=9)
        unpadded = token_scores(model, *left_pad([short, short], tokenizer.pad_token_id), completion_mask, seed=9)
    assert torch.allclose(padded.scores[0], unpadded.scores[0], atol=1e-5)


def test_scores_carry_gradients_to_the_weights(tiny):
    model, tokenizer = tiny
    ids, mask, completion_mask = batch(tokenizer)
    model.zero_grad()
    token_scores(model, ids, mask, completion_mask, seed=0).scores.sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_unknown_estimator_fails_with_a_clear_message(tiny):
    model, tokenizer = tiny
    ids, mask, completion_mask = batch(tokenizer)
    with pytest.raises(ValueError, match="estimator 'full' is not one of coupled, decoupled, d1"):
        token_scores(model, ids, mask, completion_mask, estimator="full", seed=0)


def _scores_of_rows(model, tokenizer, prompts, completions, rows, estimator):
    inputs = _one_batch(tokenizer, [prompts[i] for i in rows], [completions[i] for i in rows])
    return token_scores(model, *inputs, estimator=estimator, seed=[1000 + i for i in rows]).scores


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_per_row_seeds_make_a_rows_scores_independent_of_how_the_batch_is_cut(tiny, estimator):
    model, tokenizer = tiny
    prompts = random_rows(tokenizer, [3, 7, 4, 5], seed=1)  # ragged: every cut pads differently
    completions = random_rows(tokenizer, [8] * 4, seed=2)
    with torch.no_grad():
        whole = _scores_of_rows(model, tokenizer, prompts, completions, [0, 1, 2, 3], estimator)
        cut = torch.cat([_scores_of_rows(model, tokenizer, prompts, completions, rows, estimator)
                         for rows in ([0, 1], [2], [3])])
        one_seed = token_scores(model, *_one_batch(tokenizer, prompts, completions), estimator=estimator, seed=1000)
    torch.testing.assert_close(whole, cut, atol=1e-5, rtol=1e-5)
    if estimator != "d1":  # a t per row, not one for the batch
        assert one_seed.scores.shape == whole.shape and not torch.allclose(one_seed.scores, whole)


def _one_batch(tokenizer, prompts, completions):
    prompt_ids, prompt_mask = left_pad(prompts, tokenizer.pad_token_id)
    completion = torch.tensor(completions)
    return (torch.cat([prompt_ids, completion], 1), torch.cat([prompt_mask, torch.ones_like(completion)], 1),
            torch.ones_like(completion, dtype=torch.bool))
