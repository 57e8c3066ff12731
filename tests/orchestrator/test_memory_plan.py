"""The dry run's memory estimate (orchestrator/memory_plan.py) and its plan (orchestrator/placement.py)."""
import json
import math
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.placement import check_capacity, resolve_devices
from orchestrator.errors import UserError
from orchestrator.memory_plan import (ModelShape, learner_memory, model_shape, parameter_count, rollout_memory,
                                      rollout_rows)
from orchestrator.placement import format_plan

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "configs" / "diffucoder_7b.yaml"
TWO_NODES = REPO / "configs" / "diffucoder_7b_2nodes.yaml"
DEMO = REPO / "configs" / "demo.yaml"
SHAPE_7B = json.loads((REPO / "configs" / "shapes" / "diffucoder_7b.json").read_text())


@pytest.mark.parametrize("options", [{}, {"tie_word_embeddings": True}, {"head_dim": 16}, {"num_key_value_heads": 4}],
                         ids=["untied", "tied", "head_dim", "no_gqa"])
def test_parameter_count_of_a_tiny_qwen2_equals_the_built_models(options):
    from tests.tiny_model import build_tiny

    model, _ = build_tiny(**options)
    assert parameter_count(model.config.to_dict()) == sum(p.numel() for p in model.parameters())


def test_the_diffucoder_7b_shape_has_7_6e9_parameters_as_its_bf16_safetensors_weigh():
    count = parameter_count(SHAPE_7B)
    assert 7.55e9 < count < 7.65e9
    assert abs(2 * count - 15.23e9) < 0.01e9  # apple/DiffuCoder-7B-Instruct: 4.88 + 4.93 + 4.33 + 1.09 GB


def test_the_paper_recipe_plans_from_its_shape_file_when_the_model_is_not_here():
    shape, source = model_shape(load_config(PAPER))
    assert source == str(REPO / "configs" / "shapes" / "diffucoder_7b.json")
    assert shape == ModelShape.from_config(SHAPE_7B)


def test_model_path_config_json_comes_before_the_shape_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**SHAPE_7B, "num_hidden_layers": 2}))
    shape, source = model_shape(load_config(PAPER, [f"model.path={tmp_path}"]))
    assert (shape.num_hidden_layers, source) == (2, str(tmp_path / "config.json"))


def test_without_model_path_the_tiny_models_numbers_are_planned():
    cfg = load_config(DEMO)
    shape, source = model_shape(cfg)
    assert source.startswith("model.tiny")
    assert (shape.hidden_size, shape.vocab_size) == (cfg.model.tiny.hidden_size, cfg.model.tiny.vocab_size)


def test_no_config_json_anywhere_is_said_in_the_plan():
    cfg = load_config(PAPER, ["model.shape_config=null"])
    assert model_shape(cfg) == (None, "no config.json (model.path missing, no model.shape_config)")
    assert "memory estimate: no config.json (model.path missing, no model.shape_config)" in format_plan(cfg)


def test_a_shape_file_without_the_architecture_keys_is_a_user_error(tmp_path):
    (tmp_path / "shape.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(UserError, match=r"^model\.shape_config: .*shape\.json has no intermediate_size"):
        model_shape(load_config(PAPER, [f"model.shape_config={tmp_path / 'shape.json'}"]))


def _states(stage: int, ranks: int, device: str = "cuda", dtype: str = "bfloat16"):
    # 8 x 10 = 80 sequences: micro-batch 10 with 1, 2, 4 or 8 ranks
    cfg = load_config(PAPER, [f"learner.zero_stage={stage}", f"learner.num_ranks={ranks}", f"model.dtype={dtype}"])
    return learner_memory(cfg, ModelShape.from_config(SHAPE_7B), device)


@pytest.mark.parametrize("ranks", [2, 4, 8])
def test_each_zero_stage_partitions_no_less_than_the_one_before(ranks):
    states = [_states(stage, ranks).model_states for stage in range(4)]
    assert states == sorted(states, reverse=True) and len(set(states)) == 4


@pytest.mark.parametrize("ranks", [1, 2, 4, 8])
def test_zero_stages_partition_exactly_what_the_zero_paper_says(ranks):
    full, P = _states(0, ranks), parameter_count(SHAPE_7B)
    assert (full.params, full.grads, full.optimizer) == (2 * P, 2 * P, 12 * P)
    one, two, three = (_states(stage, ranks) for stage in (1, 2, 3))
    assert (one.params, one.grads, one.optimizer) == (2 * P, 2 * P, 12 * P // ranks)
    assert (two.params, two.grads, two.optimizer) == (2 * P, 2 * P // ranks, 12 * P // ranks)
    assert three.model_states * ranks == full.model_states
    assert {m.activations for m in (full, one, two, three)} == {full.activations}  # ZeRO does not touch activations


def test_fp32_training_on_cpu_holds_4_4_8_bytes_and_bf16_2_2_12_bytes_per_parameter():
    P = parameter_count(SHAPE_7B)
    fp32 = _states(0, 1, device="cpu", dtype="float32")
    bf16_cpu = _states(0, 1, device="cpu", dtype="bfloat16")
    gpu = _states(0, 1, device="cuda", dtype="float32")  # on a GPU the model trains in bf16 whatever model.dtype
    assert (fp32.params, fp32.grads, fp32.optimizer, fp32.reference) == (4 * P, 4 * P, 8 * P, 4 * P)
    assert (bf16_cpu.params, bf16_cpu.grads, bf16_cpu.optimizer, bf16_cpu.reference) == (2 * P, 2 * P, 12 * P, 2 * P)
    assert gpu == bf16_cpu
    assert fp32.activations == 2 * bf16_cpu.activations


def test_no_kl_term_means_no_reference_model_and_checkpointing_keeps_fewer_activations():
    shape = ModelShape.from_config(SHAPE_7B)
    base = learner_memory(load_config(PAPER), shape)
    assert learner_memory(load_config(PAPER, ["learner.kl_beta=0"]), shape).reference == 0 < base.reference
    full = learner_memory(load_config(PAPER, ["model.gradient_checkpointing=false"]), shape)
    assert base.activations * 10 < full.activations
    assert learner_memory(load_config(PAPER, ["learner.estimator=d1"]), shape).logits * 3 == base.logits


def test_kv_cache_of_a_hand_computed_case():
    cfg = load_config(DEMO, ["data.max_prompt_tokens=10", "rollout.max_new_tokens=6", "rollout.steps=6",
                             "rollout.group_size=4", "rollout.prompts_per_step=3", "rollout.num_workers=2",
                             "learner.micro_batch_size=2"])
    shape = ModelShape(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=320, head_dim=8)
    assert rollout_rows(cfg) == 8  # 4 completions x ceil(3 groups / 2 workers)
    # 2 (K and V) x 2 layers x 2 kv heads x 8 head_dim x 16 tokens (10 + 6) x 8 rows x 2 bytes (bf16 on GPU)
    assert rollout_memory(cfg, shape, "cuda").kv_cache == 16384
    assert rollout_memory(cfg, shape, "cpu").kv_cache == 2 * 16384  # demo's model.dtype float32
    assert rollout_memory(cfg, shape, "cuda").weights == 2 * shape.parameters


def test_async_mode_hands_a_worker_the_groups_eta_steps_ahead():
    sync = load_config(PAPER)
    assert rollout_rows(sync) == 20  # 10 completions x ceil(8 groups / 4 workers)
    assert rollout_rows(load_config(PAPER, ["run.mode=async", "run.eta=1"])) == 10 * math.ceil(16 / 4)


def test_the_paper_recipe_refuses_a_cluster_without_gpus_naming_learner_gpus_per_rank():
    with pytest.raises(UserError, match=r"^learner\.gpus_per_rank=1: the Ray cluster has no GPUs"):
        format_plan(load_config(PAPER), {"CPU": 64.0, "GPU": 0.0, "nodes": 1})


def test_the_paper_recipe_fits_one_8_gpu_node_and_the_2_node_recipe_is_short_of_one():
    node = {"CPU": 64.0, "GPU": 8.0, "nodes": 1}
    plan = format_plan(load_config(PAPER), node)
    assert "needs: 8 CPUs, 8 GPUs in total" in plan and "fits: 8 of 8 GPUs, 8 of 64 CPUs" in plan
    assert "SHORT" not in plan
    short = format_plan(load_config(TWO_NODES), node)
    assert "needs: 16 CPUs, 16 GPUs in total" in short
    assert "  SHORT: learner.num_ranks=8 x learner.gpus_per_rank=1 + rollout.num_workers=8 x " \
           "rollout.gpus_per_worker=1 = 16 GPUs: the Ray cluster has 8 (1 node, 64 CPUs, 8 GPUs)" in short


def test_a_cluster_short_of_cpus_is_a_line_of_the_plan():
    plan = format_plan(load_config(PAPER), {"CPU": 4.0, "GPU": 8.0, "nodes": 1})
    assert "  SHORT: 8 CPUs needed, the cluster has 4" in plan


def test_a_custom_resource_the_cluster_lacks_is_a_short_line_and_stops_a_run_with_exit_2():
    cfg = load_config(PAPER, ["learner.resources={learner_node: 1}"])
    node = {"CPU": 64.0, "GPU": 8.0, "nodes": 1, "learner_node": 2.0}
    with pytest.raises(UserError, match=r"^learner\.resources=\{learner_node: 1\}: 4 x 1 learner_node needed, "
                                        r"the Ray cluster has 2 \(1 node, 64 CPUs, 8 GPUs\); start nodes with"):
        check_capacity(cfg, resolve_devices(cfg, node), node)
    assert "  SHORT: learner.resources={learner_node: 1}: 4 x 1 learner_node needed" in format_plan(cfg, node)
    roomy = {**node, "learner_node": 4.0}
    check_capacity(cfg, resolve_devices(cfg, roomy), roomy)
    assert "SHORT" not in format_plan(cfg, roomy)


def test_run_device_cpu_plans_no_gpus_even_on_a_gpu_recipe():
    plan = format_plan(load_config(PAPER, ["run.device=cpu"]))
    assert "needs: 8 CPUs, 0 GPUs in total" in plan and "host memory" in plan and "GPU memory" not in plan


LLADA_8B = {"model_type": "llada", "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
            "mlp_hidden_size": 12288, "mlp_ratio": 4, "vocab_size": 126464, "embedding_size": 126464,
            "weight_tying": False, "block_type": "llama"}  # GSAI-ML/LLaDA-8B-Instruct's config.json numbers


def test_a_llada_config_plans_under_its_own_keys():
    """LLaDA-8B: 8.02e9 parameters (2 x 126464 x 4096 embeddings and head + 32 x 218.1M); the Qwen2 formula's
    q/k/v biases, which LLaDA lacks, are the only difference from a built tiny LLaDA's count."""
    assert parameter_count(LLADA_8B) == pytest.approx(8.02e9, rel=2e-3)
    from actors.dllm.llada import LladaModel
    from tests.tiny_model import build_tiny, tiny_llada

    model = tiny_llada(build_tiny()[1])
    config = model.config.to_dict()
    c = model.config
    biases = c.n_layers * (c.d_model + 2 * c.effective_n_kv_heads * c.head_dim)
    assert isinstance(model, LladaModel)
    assert parameter_count(config) - biases == sum(p.numel() for p in model.parameters())
