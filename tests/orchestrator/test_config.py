import dataclasses
import pickle
from pathlib import Path

import pytest

from orchestrator.config import Config, check_paths, config_to_yaml, load_config, save_config
from orchestrator.errors import UserError

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted((REPO / "configs").glob("*.yaml"))
DEMO = REPO / "configs" / "demo.yaml"


def user_error(path, overrides=()) -> str:
    with pytest.raises(UserError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_loads_validates_and_pickles(preset):
    cfg = load_config(preset, [])
    assert isinstance(cfg, Config)
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_presets_include_the_four_named_in_the_issue():
    assert {"demo.yaml", "diffucoder_7b.yaml", "ablation_d1.yaml", "ablation_decoupled.yaml"} <= {p.name for p in PRESETS}


def test_paper_preset_holds_the_recipe_numbers():
    cfg = load_config(REPO / "configs" / "diffucoder_7b.yaml")
    ro, le = cfg.rollout, cfg.learner
    assert (ro.group_size, ro.prompts_per_step, ro.max_new_tokens, ro.steps) == (10, 8, 256, 256)
    assert (ro.alg, ro.temperature, ro.top_p) == ("entropy", 1.2, 0.95)
    assert ro.top_k == 50  # the released trainer's: the HF generation-config default of transformers < 5
    assert (le.mu, le.clip_eps, le.kl_beta, le.lr, le.lr_schedule, le.zero_stage) == (2, 0.5, 0.01, 1e-6, "cosine", 2)
    assert (cfg.model.dtype, cfg.model.gradient_checkpointing, le.estimator) == ("bfloat16", True, "coupled")


def test_ablation_presets_differ_from_demo_only_in_estimator_and_name():
    demo = dataclasses.asdict(load_config(DEMO))
    for name, estimator in [("ablation_d1", "d1"), ("ablation_decoupled", "decoupled")]:
        ablation = dataclasses.asdict(load_config(REPO / "configs" / f"{name}.yaml"))
        assert ablation["learner"].pop("estimator") == estimator
        assert ablation["run"].pop("name") == name
        expected = {**demo, "run": {k: v for k, v in demo["run"].items() if k != "name"},
                    "learner": {k: v for k, v in demo["learner"].items() if k != "estimator"}}
        assert ablation == expected


def test_overrides_are_applied_with_their_schema_types():
    cfg = load_config(DEMO, ["rollout.group_size=8", "learner.lr=3e-4", "run.mode=async", "learner.adam_betas=[0.8,0.9]",
                             "rollout.top_k=5", "metrics.tensorboard=false"])
    assert cfg.rollout.group_size == 8 and isinstance(cfg.rollout.group_size, int)
    assert cfg.learner.lr == 3e-4 and cfg.run.mode == "async" and cfg.learner.adam_betas == [0.8, 0.9]
    assert cfg.rollout.top_k == 5 and cfg.metrics.tensorboard is False


def test_unknown_override_key_names_key_value_and_allowed_keys():
    message = user_error(DEMO, ["rollout.group_sise=8"])
    assert message.startswith("rollout.group_sise=8: unknown key")
    assert "group_size" in message and "prompts_per_step" in message


def test_unknown_key_in_a_preset_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner:\n  learning_rate: 0.1\n")
    message = user_error(bad)
    assert message.startswith("learner.learning_rate=0.1: unknown key") and str(bad) in message


def test_wrong_type_names_the_expected_type():
    assert user_error(DEMO, ["rollout.group_size=abc"]).startswith("rollout.group_size=abc: expected an integer")
    assert "expected an integer or null" in user_error(DEMO, ["rollout.top_k=many"])
    assert "expected true or false" in user_error(DEMO, ["run.mode=sync", "data.shuffle=maybe"])


def test_wrong_type_in_a_preset_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: %s\nrollout:\n  group_size: four\n" % DEMO)
    assert user_error(bad) == f"rollout.group_size=four: expected an integer (in {bad})"


def test_batch_that_does_not_split_into_micro_batches_is_rejected():
    message = user_error(DEMO, ["learner.micro_batch_size=3"])
    assert message == "learner.micro_batch_size=3: must divide rollout.prompts_per_step*rollout.group_size=64"


def test_bad_enum_value_lists_the_allowed_values():
    assert user_error(DEMO, ["learner.estimator=coupeld"]) == (
        "learner.estimator=coupeld: must be one of coupled, decoupled, d1")


@pytest.mark.parametrize("overrides, key", [
    (["learner.micro_batch_size=128"], "learner.micro_batch_size=128"),
    (["rollout.steps=64"], "rollout.steps=64"),
    (["rollout.max_new_tokens=0", "rollout.steps=1"], "rollout.max_new_tokens=0"),
    (["rollout.top_p=0"], "rollout.top_p=0.0"),
    (["rollout.temperature=-1"], "rollout.temperature=-1.0"),
    (["run.mode=async", "run.eta=-1"], "run.eta=-1"),
    (["rollout.group_size=1", "learner.micro_batch_size=2"], "rollout.group_size=1"),
    (["learner.lr=0"], "learner.lr=0.0"),
    (["rollout.num_workers=0"], "rollout.num_workers=0"),
    (["learner.zero_stage=4"], "learner.zero_stage=4"),
    (["ray.metrics_export_port=12000"], "ray.metrics_export_port=12000"),
    (["learner.num_ranks=3"], "learner.micro_batch_size=16"),
    (["run.steps=4", "chaos.driver_kill_at_step=5"], "chaos.driver_kill_at_step=5"),
    (["chaos.driver_kill_point=never"], "chaos.driver_kill_point=never"),
])
def test_inconsistent_values_are_rejected_naming_the_key(overrides, key):
    assert user_error(DEMO, overrides).startswith(f"{key}: ")


def test_missing_preset_file_is_a_user_error(tmp_path):
    assert "not found" in user_error(tmp_path / "nope.yaml")


def test_malformed_override_is_a_user_error():
    assert "expected key=value" in user_error(DEMO, ["rollout.group_size"])


def test_base_chain_that_loops_is_a_user_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    assert "loops" in user_error(tmp_path / "a.yaml")


def test_saved_config_reloads_to_the_same_object(tmp_path):
    cfg = load_config(DEMO, ["rollout.group_size=8", "learner.estimator=d1"])
    saved = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert saved.read_text() == config_to_yaml(cfg)
    assert load_config(saved, []) == cfg


def test_ray_address_comes_from_the_environment_only_when_unset(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6380")
    assert load_config(DEMO).ray.address == "10.0.0.1:6380"
    assert load_config(DEMO, ["ray.address=auto"]).ray.address == "auto"
    monkeypatch.delenv("RAY_ADDRESS")
    assert load_config(DEMO).ray.address is None


def test_check_paths_names_a_missing_dataset(tmp_path):
    cfg = load_config(DEMO, [f"data.train={tmp_path / 'missing.jsonl'}"])
    with pytest.raises(UserError, match=r"^data\.train=.*missing\.jsonl: not found"):
        check_paths(cfg)
    check_paths(load_config(DEMO))


def test_relative_data_paths_become_absolute_and_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(DEMO)
    assert cfg.data.train == str(REPO / "configs" / "data" / "toy_train.jsonl")
    check_paths(cfg)
    (tmp_path / "mine.jsonl").write_text("")
    assert load_config(DEMO, ["data.train=mine.jsonl"]).data.train == str(tmp_path / "mine.jsonl")


def test_broadcast_sync_refuses_rollout_workers_sharing_a_gpu():
    with pytest.raises(UserError, match=r"^weights\.sync=broadcast: needs whole GPUs per rollout worker "
                                        r"\(rollout\.gpus_per_worker=0\.5\)"):
        load_config("configs/demo.yaml", ["weights.sync=broadcast", "rollout.gpus_per_worker=0.5"])
    assert load_config("configs/demo.yaml", ["weights.sync=object_store", "rollout.gpus_per_worker=0.5"])
