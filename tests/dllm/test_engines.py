"""actors/engines.py and actors/decoder_settings.py: the one generation protocol, the seed rule, the one settings type;
and the causal policy behind the same Policy interface as the dLLM families."""
import dataclasses

import pytest
import torch

from actors.decoder_settings import DecoderSettings, SettingsError
from actors.dllm import decode, save_model
from actors.dllm.llada import save_llada
from actors.dllm.seeding import batch_seed, derived_seed
from actors.engines import Generation
from actors.policy import CausalPolicy, policy_for
from orchestrator.config import RolloutConfig
from tests.tiny_model import build_tiny, random_rows, tiny_llada


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    model, tokenizer = build_tiny()
    save_model(model, tokenizer, root / "dream")
    save_llada(tiny_llada(tokenizer), tokenizer, root / "llada")
    return root


def prompts(tokenizer, lengths=(5, 9, 3)):
    return random_rows(tokenizer, lengths, seed=1)


def test_the_reference_engine_is_one_decode_call_seeded_from_its_rows(dirs):
    settings = DecoderSettings(max_new_tokens=6, steps=6)
    engine = policy_for(dirs / "dream").engine(dirs / "dream", settings)
    rows, seeds = prompts(engine.tokenizer), [11, 12, 13]
    out = engine.generate(rows, seeds, 0.8)
    assert isinstance(out, Generation) and out.logprobs is None and engine.name == "reference"
    assert out.completion_ids.shape == out.order.shape == (3, 6) and len(out.texts) == 3
    with torch.no_grad():
        expected = decode(engine.model, engine.tokenizer, rows, dataclasses.replace(settings), temperature=0.8,
                          seeds=[batch_seed(seeds)] * 3)
    assert torch.equal(out.completion_ids, expected.completion_ids)
    assert batch_seed([7, 7]) == 7 and batch_seed([7, 8]) == derived_seed("batch", 7, 8)


@pytest.mark.parametrize("family, settings", [
    ("dream", DecoderSettings(decoder="fast", max_new_tokens=6, threshold=0.5, block_length=3)),
    ("llada", DecoderSettings(decoder="fast", max_new_tokens=6, threshold=0.5, block_length=3, alg="maskgit_plus",
                              top_p=1.0)),
])
def test_a_fast_engine_row_depends_only_on_its_own_seed(dirs, family, settings):
    engine = policy_for(dirs / family).engine(dirs / family, settings)
    rows = prompts(engine.tokenizer)
    together = engine.generate(rows, [21, 22, 23], 1.0).completion_ids
    alone = engine.generate(rows[1:2], [22], 1.0).completion_ids
    assert torch.equal(together[1:2], alone)
    assert engine.digest() == engine.digest() and len(engine.digest()) == 64


def test_an_engine_refuses_settings_its_family_cannot_decode(dirs):
    with pytest.raises(ValueError, match="alg 'entropy'"):
        policy_for(dirs / "llada").engine(dirs / "llada", DecoderSettings(top_p=1.0))


def test_the_causal_policy_scores_and_trains_exactly(tmp_path):
    from actors.causal import causal_sft_loss, causal_token_logprobs
    from actors.dllm.padding import completion_mask_from_ids
    from tests.tiny_model import tiny_spec

    policy = policy_for("causal")
    model, tokenizer = policy.build_tiny(tiny_spec())
    assert isinstance(policy, CausalPolicy) and policy.exact_scores and policy.family == "causal"
    ids = torch.tensor(random_rows(tokenizer, [10, 10], seed=3))
    mask = torch.ones_like(ids)
    completion_mask = torch.ones(2, 4, dtype=torch.bool)
    with torch.no_grad():
        scores = policy.token_scores(model, ids, mask, completion_mask, estimator="coupled", seed=[1, 2]).scores
        assert torch.equal(scores, causal_token_logprobs(model, ids, mask, 4))
        end = tokenizer.eos_token_id
        completion = ids[:, -4:].clone()
        completion[0, 1] = end
        full = torch.cat([ids[:, :-4], completion], dim=1)
        got = policy.sft_loss(model, full, mask, completion, seed=0, end_ids=[end])
        assert torch.equal(got, causal_sft_loss(model, full, mask, completion_mask_from_ids(completion, [end])))
    policy.save(model, tokenizer, tmp_path / "causal")
    assert policy_for(tmp_path / "causal") is policy


def test_decoder_settings_are_the_one_validator_with_the_field_named():
    for field, value in (("threshold", 0), ("cache", "full"), ("steps", 99), ("top_p", 0.0), ("block_length", 0),
                         ("decoder", "slow"), ("alg", "best"), ("max_new_tokens", 0)):
        with pytest.raises(SettingsError) as info:
            DecoderSettings(**{field: value})
        assert info.value.field == field and info.value.value == value
    with pytest.raises(SettingsError, match="alg_temp"):
        DecoderSettings(decoder="fast", alg_temp=0.5)
    assert DecoderSettings(decoder="reference").unread(["threshold", "steps", "cache"]) == ["threshold", "cache"]
    assert DecoderSettings(decoder="fast").unread(["threshold", "steps"]) == ["steps"]


def test_the_rollout_section_has_the_decoder_settings_defaults():
    """One set of defaults: every decoder knob of the config defaults to DecoderSettings' value (the canvas,
    max_new_tokens and steps, is the run's own)."""
    defaults, rollout = DecoderSettings(), RolloutConfig()
    for field in dataclasses.fields(DecoderSettings):
        if field.name not in ("max_new_tokens", "steps"):
            assert getattr(rollout, field.name) == getattr(defaults, field.name), field.name
    read = DecoderSettings.from_values(rollout)
    assert (read.max_new_tokens, read.steps, read.cache) == (rollout.max_new_tokens, rollout.steps, "prefix")
