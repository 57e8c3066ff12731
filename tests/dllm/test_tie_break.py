"""Equal confidences are revealed leftmost first in every decoder, whatever the canvas width (issue 23).

`torch.topk` leaves the order of ties unspecified; on CPU it breaks them leftmost only from width 64 on, so
the demo's 48-position canvas used to reveal a random tied position where Dream's release, ranking over the
whole canvas, reveals the leftmost. A model whose logits are the same at every position makes every masked
position tie with every other, so the order of reveals must be the positions' order."""

import pytest
import torch

from actors.dllm import generate, generate_fast
from actors.dllm.decoding import leftmost_topk
from actors.dllm.fast_decoding import _accept
from actors.dllm.llada_decoding import generate_llada
from tests.dllm.fakes import Flat

WIDTHS = [8, 48, 256]
CONFIDENCE_ALGS = ["maskgit_plus", "topk_margin", "entropy"]


def non_decreasing(order: torch.Tensor) -> bool:
    values = order.tolist()
    return values == sorted(values) and min(values) >= 0


@pytest.mark.parametrize("width", WIDTHS)
def test_leftmost_topk_takes_equal_scores_in_position_order(width):
    scores = torch.zeros(2, width)
    scores[1, width // 2] = 1.0  # one larger score first, then the ties from the left
    assert leftmost_topk(scores, 3)[0].tolist() == [0, 1, 2]
    assert leftmost_topk(scores, 3)[1].tolist() == [width // 2, 0, 1]
    scores[:, :3] = -torch.inf  # positions already revealed never come before a tie
    assert leftmost_topk(scores, 2)[0].tolist() == [3, 4]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("alg", CONFIDENCE_ALGS)
def test_the_reference_decoder_reveals_tied_positions_from_the_left(peaked_tiny, width, alg):
    _, tokenizer = peaked_tiny
    model = Flat(len(tokenizer), token=tokenizer.convert_tokens_to_ids("a"))
    result = generate(model, tokenizer, [[7, 8, 9], [7, 8]], max_new_tokens=width, steps=width, alg=alg)
    for row in result.order:
        assert non_decreasing(row), row.tolist()
        assert row[-2:].tolist() == [width - 1] * 2  # the schedule's two at the last step, the rightmost


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("alg", CONFIDENCE_ALGS)
def test_the_fast_decoder_reveals_tied_positions_from_the_left(peaked_tiny, width, alg):
    _, tokenizer = peaked_tiny
    model = Flat(len(tokenizer), token=tokenizer.convert_tokens_to_ids("a"))
    result = generate_fast(model, tokenizer, [[7, 8, 9], [7, 8]], max_new_tokens=width, alg=alg, threshold=0.9,
                           block_length=8 if width > 8 else None, cache="none", seed=0)
    assert result.forwards == width  # never confident: one reveal per forward
    for row in result.order:
        assert row.tolist() == list(range(width))


@pytest.mark.parametrize("width", WIDTHS)
def test_the_fast_rules_rank_ties_leftmost(width):
    candidates = torch.ones(1, width, dtype=torch.bool)
    candidates[0, 0] = False  # a revealed position is no candidate
    p = torch.full((1, width), 0.5).masked_fill(~candidates, -torch.inf)
    rank = p.clone()
    assert _accept(p, rank, candidates, 0.9, None).nonzero()[:, 1].tolist() == [1]
    assert _accept(p, rank, candidates, 0.9, None, min_tokens=3).nonzero()[:, 1].tolist() == [1, 2, 3]
    # factor 1.0: the n-th value must reach 1 - 1 / (n + 1): 0.5 for the first only
    assert _accept(p, rank, candidates, 0.0, 1.0).nonzero()[:, 1].tolist() == [1]


@pytest.mark.parametrize("width", WIDTHS)
def test_llada_s_decoder_reveals_tied_positions_from_the_left(width):
    vocab, mask = 50, 49
    model = Flat(vocab, token=5)
    prompt = torch.tensor([[3, 14, 15], [5, 35, 8]])
    result = generate_llada(model, prompt, mask_id=mask, steps=width, gen_length=width, block_length=width)
    for row in result.order:
        assert row.tolist() == list(range(width))
    blocks = generate_llada(model, prompt, mask_id=mask, steps=width // 2, gen_length=width, block_length=width // 4)
    for row in blocks.order:  # two reveals per step within each block, blocks left to right
        assert row.tolist() == [j // 2 for j in range(width)]
