"""The LLaDA-8B presets: configs/llada_8b_d1.yaml (d1's diffu-GRPO recipe as released, dllm-reasoning/d1
diffu-grpo/slurm_scripts/train.yaml) and configs/llada_8b_coupled.yaml (the DiffuCoder preset's numbers adapted to
LLaDA), planned from configs/shapes/llada_8b_instruct.json (GSAI-ML/LLaDA-8B-Instruct's released config.json)."""
import json
import os
import pickle
import re
import subprocess
import sys

import pytest

from orchestrator import config as config_module
from orchestrator.config import Config, check_model_kind, load_config
from orchestrator.errors import UserError
from orchestrator.memory_plan import ModelShape, model_shape, parameter_count
from orchestrator.placement import format_plan
from tests.orchestrator.test_config import REPO
from tests.orchestrator.test_memory_plan import LLADA_8B

D1 = REPO / "configs" / "llada_8b_d1.yaml"
COUPLED = REPO / "configs" / "llada_8b_coupled.yaml"
DIFFUCODER = REPO / "configs" / "diffucoder_7b.yaml"
SHAPE_FILE = REPO / "configs" / "shapes" / "llada_8b_instruct.json"
SHAPE = json.loads(SHAPE_FILE.read_text())
PRESETS = [D1, COUPLED]

# GSAI-ML/LLaDA-8B-Instruct's config.json, the keys the shape file copies (architecture and token ids)
RELEASED_CONFIG = {
    "model_type": "llada", "architectures": ["LLaDAModelLM"], "block_type": "llama", "d_model": 4096, "n_layers": 32,
    "n_heads": 32, "n_kv_heads": 32, "mlp_ratio": 4, "mlp_hidden_size": 12288, "activation_type": "silu",
    "layer_norm_type": "rms", "rms_norm_eps": 1e-05, "rope": True, "rope_theta": 500000.0, "include_bias": False,
    "include_qkv_bias": False, "weight_tying": False, "vocab_size": 126464, "embedding_size": 126464,
    "max_sequence_length": 4096, "mask_token_id": 126336, "eos_token_id": 126081, "pad_token_id": 126081,
    "torch_dtype": "bfloat16",
}


def _env() -> dict:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def llada_dir(tmp_path):
    """A directory that looks like the LLaDA-8B-Instruct download to the pre-start checks: its config.json only."""
    (tmp_path / "config.json").write_text(SHAPE_FILE.read_text())
    return tmp_path


# ------------------------------------------------------------------ the shape file


def test_the_shape_file_holds_the_released_config_json_numbers():
    assert {k: v for k, v in SHAPE.items() if not k.startswith("_")} == RELEASED_CONFIG
    assert LLADA_8B.items() <= SHAPE.items()  # test_memory_plan.py's LLaDA-8B numbers agree


def test_the_shape_file_plans_8_02e9_parameters_under_llada_keys():
    count = parameter_count(SHAPE)
    # 2 x 126464 x 4096 (embeddings + untied head) + 4096 (ln_f) + 32 x (4 x 4096^2 + 3 x 4096 x 12288 + 2 x 4096)
    released = 2 * 126464 * 4096 + 4096 + 32 * (4 * 4096**2 + 3 * 4096 * 12288 + 2 * 4096)
    assert released == 8_015_581_184
    # the Qwen2 formula counts q/k/v biases LLaDA lacks (test_memory_plan.py): 32 x 3 x 4096 more
    assert count - released in (0, 32 * 3 * 4096)
    assert count == pytest.approx(8.02e9, rel=1e-3)


# ------------------------------------------------------------------ both presets


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_the_preset_loads_validates_and_pickles(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, Config)
    assert pickle.loads(pickle.dumps(cfg)) == cfg


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_the_plan_names_llada_8b_from_its_shape_file_when_the_model_is_not_here(preset):
    cfg = load_config(preset)
    assert not os.path.exists(cfg.model.path)
    shape, source = model_shape(cfg)
    assert source == str(SHAPE_FILE)
    assert shape == ModelShape.from_config(SHAPE)
    plan = format_plan(cfg)
    assert f"memory estimate from {SHAPE_FILE}: {parameter_count(SHAPE):,} parameters" in plan
    assert "learner  x4" in plan and "rollout  x4" in plan and "needs: 8 CPUs, 8 GPUs in total" in plan
    assert "ZeRO-2 over 4 ranks):" in plan  # no gradient checkpointing: not yet for LLaDA


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_a_run_on_the_llada_download_passes_the_pre_start_checks(preset, llada_dir):
    """What `diffurl train` checks before anything starts (the family from model.path's config.json, LLaDA's
    decoder settings, no gradient checkpointing), with model.path at a directory holding the released config.json."""
    from actors.policy import family_of

    assert family_of(llada_dir) == "llada"
    check_model_kind(load_config(preset, [f"model.path={llada_dir}"]))


@pytest.mark.parametrize("override, named", [
    ("rollout.alg=entropy", "rollout.alg 'entropy'"),
    ("rollout.top_p=0.95", "top_p"),
    ("rollout.steps=100", "rollout.steps 100"),
    ("model.gradient_checkpointing=true", "model.gradient_checkpointing=true"),
])
def test_what_llada_cannot_do_is_refused_before_a_run_of_the_preset_starts(override, named, llada_dir):
    with pytest.raises(UserError) as info:
        check_model_kind(load_config(COUPLED, [f"model.path={llada_dir}", override]))
    assert named in str(info.value)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_dry_run_of_the_preset_plans_llada_8b_and_exits_0(preset, tmp_path):
    args = ["train", str(preset.relative_to(REPO)), "--dry-run", f"run.root_dir={tmp_path}"]
    plan = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=180)
    assert plan.returncode == 0, plan.stderr
    found = re.search(r"memory estimate from (\S+): ([\d,]+) parameters", plan.stdout)
    assert found, plan.stdout
    assert found.group(1) == str(SHAPE_FILE)
    assert int(found.group(2).replace(",", "")) == parameter_count(SHAPE)
    assert not any(tmp_path.iterdir())


def test_the_dry_run_refuses_what_a_llada_run_refuses_when_the_family_comes_from_the_shape_file():
    """The dry run reads the family from model.shape_config when the model is not on this machine."""
    config_module.check_plan(load_config(D1))
    config_module.check_plan(load_config(COUPLED))
    for override in ("rollout.alg=entropy", "model.gradient_checkpointing=true"):
        with pytest.raises(UserError) as info:
            config_module.check_plan(load_config(COUPLED, [override]))
        assert "model.shape_config=" in str(info.value)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_number_in_the_preset_names_its_source(preset):
    """A number without a comment on its line, or a comment line right above it, is a recipe number nobody sourced."""
    lines = preset.read_text().splitlines()
    number = re.compile(r"^\s*[a-z_]+:\s*(\[[-\d.e, ]+\]|-?[\d.]+(e-?\d+)?)\s*(#.*)?$")
    unsourced = [line for i, line in enumerate(lines)
                 if (m := number.match(line)) and not m.group(3) and not lines[i - 1].lstrip().startswith("#")]
    assert unsourced == []


# ------------------------------------------------------------------ d1's numbers


def test_the_d1_preset_holds_the_released_diffu_grpo_numbers():
    """dllm-reasoning/d1 diffu-grpo/: slurm_scripts/train.yaml, accelerate.yaml, run.sh and the GSM8K / MATH
    slurm scripts (NUM_ITER=12), and diffu_grpo_config.py's defaults (temperature 0.9, ref_model_mixup_alpha 0.6)."""
    cfg = load_config(D1)
    ro, le = cfg.rollout, cfg.learner
    assert cfg.run.seed == 42
    assert (cfg.model.dtype, cfg.model.gradient_checkpointing) == ("bfloat16", False)
    assert cfg.data.max_prompt_tokens == 200
    assert (ro.group_size, ro.prompts_per_step) == (6, 16)  # num_generations 6; 8 GPUs x 6 x 2 accumulation / 6
    assert (ro.max_new_tokens, ro.steps, ro.block_length) == (256, 128, 32)
    assert (ro.decoder, ro.alg, ro.temperature, ro.top_p, ro.top_k) == ("reference", "maskgit_plus", 0.9, 1.0, None)
    assert (le.lr, le.lr_schedule, le.weight_decay, le.adam_betas, le.grad_clip) == (
        3e-6, "constant", 0.1, [0.9, 0.99], 0.2)
    assert le.warmup_steps == -(-cfg.run.steps * le.mu // 10000)  # warmup_ratio 0.0001 of the updates, rounded up
    assert (le.micro_batch_size, le.mu, le.clip_eps, le.kl_beta) == (6, 12, 0.5, 0.04)
    assert (le.estimator, le.mask_seed_policy, le.loss_norm) == ("d1", "per_iteration", "micro_batch_tokens")
    assert (le.advantage, le.scale_std, le.zero_stage) == ("mean", False, 2)
    assert (le.ref_update, le.ref_mix) == ("soft", 0.6)
    assert le.ref_update_every > cfg.run.steps  # d1's reference (the adapters switched off) never moves
    # the global batch: d1's 8 processes x per_device_train_batch_size 6 x gradient_accumulation_steps 2
    assert ro.prompts_per_step * ro.group_size == 8 * 6 * 2


def test_the_d1_estimator_masks_prompts_with_the_released_p_mask_prompt():
    """train.yaml p_mask_prompt: 0.15 (diffu_grpo_config.py's default 0.3 is overridden); diffurl's is a constant."""
    from actors.dllm import estimators

    assert estimators.D1_PROMPT_MASK_PROB == 0.15


# ------------------------------------------------------------------ the coupled preset: DiffuCoder's numbers


def test_the_coupled_preset_is_the_diffucoder_recipe_with_llada_s_adaptations():
    llada, diffucoder = load_config(COUPLED), load_config(DIFFUCODER)
    same = {
        "run": ["steps", "mode", "checkpoint_every", "keep_checkpoints"],
        "data": ["train", "max_prompt_tokens"],
        "rollout": ["num_workers", "gpus_per_worker", "group_size", "prompts_per_step", "max_new_tokens", "steps",
                    "temperature"],
        "learner": ["num_ranks", "zero_stage", "lr", "lr_schedule", "min_lr_ratio", "weight_decay", "adam_betas",
                    "grad_clip", "mu", "clip_eps", "kl_beta", "estimator", "mask_seed_policy", "advantage",
                    "scale_std", "ref_update_every", "ref_update"],
        "weights": ["sync", "bucket_mb"],
    }
    for section, keys in same.items():
        for key in keys:
            assert getattr(getattr(llada, section), key) == getattr(getattr(diffucoder, section), key), (section, key)
    ro, le = llada.rollout, llada.learner
    assert (ro.alg, ro.top_p, ro.block_length, ro.decoder) == ("maskgit_plus", 1.0, 32, "reference")
    assert (llada.model.gradient_checkpointing, le.micro_batch_size, le.loss_norm) == (False, 2, "step_tokens")
    assert le.estimator == "coupled"
