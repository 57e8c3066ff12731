"""GRPO advantages, the clipped loss with k3 KL, reference updates, the SFT loss and AR-ness."""

import copy
import math

import pytest
import torch

from actors.dllm import ar_ness, grpo_advantages, grpo_loss, left_pad, sft_loss, token_scores, update_reference
from tests.tiny_model import random_rows

K = 6


def rollout_batch(tokenizer):
    ids, mask = left_pad(random_rows(tokenizer, (5 + K, 3 + K)), tokenizer.pad_token_id)
    completion_mask = torch.tensor([[True] * K, [True] * 4 + [False] * 2])
    return ids, mask, completion_mask


def test_mean_advantages_subtract_the_group_mean_without_std_scaling():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]])
    assert grpo_advantages(rewards).tolist() == [[-1.0, 0.0, 1.0], [-1.0, -1.0, 2.0]]


def test_leave_one_out_advantages_subtract_the_mean_of_the_others():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    expected = [[1 - 11 / 3, 2 - 10 / 3, 3 - 3.0, 6 - 2.0]]
    assert torch.allclose(grpo_advantages(rewards, baseline="loo"), torch.tensor(expected))
    with pytest.raises(ValueError, match="at least 2"):
        grpo_advantages(torch.tensor([[1.0]]), baseline="loo")


def test_std_scaling_divides_by_the_group_std_and_survives_equal_rewards():
    rewards = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    scaled = grpo_advantages(rewards, scale_std=True)
    assert torch.allclose(scaled[0], torch.tensor([-1.0, 1.0]) / (math.sqrt(2) + 1e-4))
    assert scaled[1].tolist() == [0.0, 0.0]


def test_loss_matches_a_hand_computation_with_clipping_and_k3_kl():
    scores = torch.tensor([[0.0, math.log(2.0)], [math.log(0.25), 0.0]])
    old = torch.zeros(2, 2)
    ref = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    advantages = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[True, True], [True, False]])
    loss, stats = grpo_loss(scores, old, ref, advantages, mask, eps=0.5, beta=0.1)
    # ratios 1, 2 (clipped to 1.5 with A=+1), 0.25 (clipped to 0.5 with A=-1: min(-0.25, -0.5) = -0.5)
    kl = [0.0, math.exp(-math.log(2)) + math.log(2) - 1, math.exp(math.log(4)) - math.log(4) - 1]
    per_token = [-1.0 + 0.1 * kl[0], -1.5 + 0.1 * kl[1], 0.5 + 0.1 * kl[2]]
    assert loss.item() == pytest.approx(sum(per_token) / 3, rel=1e-5)
    assert stats["kl"] == pytest.approx(sum(kl) / 3, rel=1e-5)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)
    assert stats["ratio_mean"] == pytest.approx((1 + 2 + 0.25) / 3)


def test_with_one_update_per_batch_the_ratio_is_one(fresh_tiny):
    model, tokenizer = fresh_tiny
    ids, mask, completion_mask = rollout_batch(tokenizer)
    scores = token_scores(model, ids, mask, completion_mask, seed=3).scores
    advantages = torch.tensor([0.5, -2.0])
    loss, stats = grpo_loss(scores, scores.detach(), None, advantages, completion_mask, beta=0.0)
    assert stats["ratio_mean"] == 1.0 and stats["clip_fraction"] == 0.0
    expected = -(advantages[:, None] * completion_mask).sum() / completion_mask.sum()
    assert loss.item() == pytest.approx(expected.item())


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_one_sgd_step_moves_sampled_token_scores_with_the_advantage_sign(fresh_tiny, advantage):
    model, tokenizer = fresh_tiny
    ids, mask, completion_mask = rollout_batch(tokenizer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = token_scores(model, ids, mask, completion_mask, seed=3).scores
    loss, _ = grpo_loss(before, before.detach(), before.detach(), torch.full((2,), advantage), completion_mask)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = token_scores(model, ids, mask, completion_mask, seed=3).scores
    change = ((after - before.detach()) * completion_mask).sum() / completion_mask.sum()
    assert change * advantage > 0


def test_reference_update_hard_copies_and_soft_mixes(fresh_tiny):
    policy, _ = fresh_tiny
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(1.0)
    original = copy.deepcopy(reference)
    update_reference(reference, policy, mode="soft", mix=0.6)
    for (name, ref), theta, old in zip(reference.named_parameters(), policy.parameters(), original.parameters()):
        assert torch.allclose(ref, 0.6 * theta + 0.4 * old, atol=1e-6), name
    update_reference(reference, policy, mode="hard")
    assert all(torch.equal(ref, theta) for ref, theta in zip(reference.parameters(), policy.parameters()))
    with pytest.raises(ValueError, match="mode 'ema'"):
        update_reference(reference, policy, mode="ema")


def test_sft_loss_is_seeded_masks_only_trained_tokens_and_decreases_when_trained(fresh_tiny):
    model, tokenizer = fresh_tiny
    ids, mask, completion_mask = rollout_batch(tokenizer)
    first = sft_loss(model, ids, mask, completion_mask, seed=1)
    assert first.item() == sft_loss(model, ids, mask, completion_mask, seed=1).item()
    fed = []
    hook = model.model.embed_tokens.register_forward_hook(lambda module, args, out: fed.append(args[0].clone()))
    for seed in range(20):
        sft_loss(model, ids, mask, completion_mask, seed=seed)
    hook.remove()
    masked = torch.stack([inputs == tokenizer.mask_token_id for inputs in fed])  # [20, B, L]
    assert not masked[:, :, :-K].any() and not masked[:, 1, -2:].any()  # prompt and untrained tail stay visible
    assert masked[:, :, -K:].any()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(15):
        loss = sft_loss(model, ids, mask, completion_mask, seed=step % 3)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert sum(losses[-3:]) < sum(losses[:3])


def test_ar_ness_of_left_to_right_is_one_and_right_to_left_is_low():
    assert ar_ness(torch.arange(5), k=1) == (1.0, 1.0)
    assert ar_ness(torch.arange(5), k=2) == (1.0, 1.0)
    assert ar_ness(torch.tensor([0, 0, 1, 1, 2]), k=1) == (1.0, 1.0)  # ties are revealed left to right
    local, global_ = ar_ness(torch.arange(5).flip(0), k=1)
    assert local == 0.0 and global_ == pytest.approx(1 / 5)  # only the last reveal is the leftmost masked one


def test_ar_ness_of_a_shuffled_order_matches_the_hand_computation():
    order = torch.tensor([2, 0, 1, 4, 3])  # reveal sequence p = 1, 2, 0, 4, 3
    assert ar_ness(order, k=1) == pytest.approx((1 / 4, 2 / 5))
    assert ar_ness(order, k=2) == pytest.approx((0.0, 1.0))
    batch = torch.stack([order, torch.arange(5)])
    assert ar_ness(batch, k=1) == pytest.approx(((1 / 4 + 1) / 2, (2 / 5 + 1) / 2))


def test_step_token_normalisation_makes_micro_batch_losses_add_up_to_the_step_token_mean():
    torch.manual_seed(0)
    scores = torch.randn(6, 5, requires_grad=True)  # [B, K]
    old, ref = scores.detach() + 0.1 * torch.randn(6, 5), scores.detach() + 0.1 * torch.randn(6, 5)
    advantages, mask = torch.randn(6), torch.rand(6, 5) < 0.7  # ragged completions
    whole, _ = grpo_loss(scores, old, ref, advantages, mask, beta=0.04)  # own count = the step's
    n = int(mask.sum())
    for cut in ([slice(0, 2), slice(2, 6)], [slice(0, 1), slice(1, 4), slice(4, 6)]):
        parts = [grpo_loss(scores[c], old[c], ref[c], advantages[c], mask[c], beta=0.04, tokens=n) for c in cut]
        assert math.isclose(sum(float(loss.detach()) for loss, _ in parts), float(whole.detach()), rel_tol=1e-6)
        assert math.isclose(sum(s["kl"] for _, s in parts), grpo_loss(scores, old, ref, advantages, mask, beta=0.04)[1]["kl"],
                            rel_tol=1e-6)
    means = [grpo_loss(scores[c], old[c], ref[c], advantages[c], mask[c], beta=0.04)[0] for c in (slice(0, 1), slice(1, 6))]
    assert not math.isclose(float(sum(means).detach()) / 2, float(whole.detach()), rel_tol=1e-3)  # the released rule depends on the cut
