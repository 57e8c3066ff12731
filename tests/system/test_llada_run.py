"""A LLaDA checkpoint as model.path trains through the whole system (local Ray, embedded Redis, the real sandbox,
DeepSpeed on CPU): the learner and rollout workers take the family from its config.json (actors/policy.py),
decode with LLaDA's generate.py decoder and save LLaDA's released checkpoint format. It trains on a file as
DiffuCoder's recipes/process_data.py writes acecode_hard.jsonl (a signature copy under the same id), so a data
format other than diffurl's own goes through the whole loop too."""
from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch

from actors.dllm.llada import is_llada_dir, load_llada, save_llada
from orchestrator.config import check_model_kind, load_config
from orchestrator.errors import UserError
from tests.orchestrator.test_data_formats import write_case
from tests.system.test_train_integration import DIFFURL, REPO, SMALL, _check_run, _env, _run_dir
from tests.tiny_model import build_tiny, tiny_llada

LLADA = ["rollout.decoder=reference", "rollout.alg=maskgit_plus", "rollout.top_p=1.0", "rollout.block_length=8",
         "rollout.steps=8"]


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    _, tokenizer = build_tiny()
    path = tmp_path_factory.mktemp("llada") / "tiny-llada"
    save_llada(tiny_llada(tokenizer, std=0.02), tokenizer, path)
    return path


@pytest.mark.integration
def test_a_llada_model_trains_with_its_own_decoder_and_saves_its_own_format(tmp_path, llada_dir):
    data = write_case(tmp_path, "acecode-hard")
    runs = tmp_path / "runs"
    cmd = DIFFURL + ["train", "configs/demo.yaml", *SMALL, *LLADA, f"model.path={llada_dir}", f"data.train={data}",
                     f"run.root_dir={runs}", "run.name=it-llada", "rollout.num_cpus=0.5", "learner.num_cpus=0.5"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    recognised = "acecode_hard.jsonl: AceCode as DiffuCoder's process_data.py writes it (acecode_hard.jsonl)"
    assert f"{recognised} (acecode-hard)" in proc.stdout, proc.stdout[-3000:]
    run_dir = _run_dir(runs)
    _check_run(run_dir, steps=3, groups_per_step=2)
    trained = [json.loads(line) for line in (run_dir / "trained_groups.jsonl").read_text().splitlines()]
    prompts = {g["prompt_id"] for step in trained for g in step["groups"]}
    assert prompts == {"oss_1", "oss_1/signature"}, prompts  # the copy is a prompt of its own
    policy = run_dir / "checkpoints" / "step000003" / "policy"
    assert is_llada_dir(policy)
    trained, _ = load_llada(policy)
    initial, _ = load_llada(llada_dir)
    changed = [k for k, v in initial.state_dict().items() if not torch.equal(v, trained.state_dict()[k])]
    assert changed, "three steps of coupled-GRPO changed no weight"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["decode_forwards"] == 8 for r in rows)  # generate.py: 2 blocks x 4 steps, one forward each


def test_a_llada_setting_its_decoder_lacks_exits_2_with_one_line_before_anything_starts(tmp_path, llada_dir):
    cmd = DIFFURL + ["train", "configs/demo.yaml", *SMALL, *LLADA, f"model.path={llada_dir}", "rollout.alg=entropy",
                     f"run.root_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "rollout.alg 'entropy': LLaDA's decoder remasks by low confidence" in lines[0]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("override, message", [
    ("rollout.alg=entropy", "rollout.alg 'entropy': LLaDA's decoder remasks by low confidence"),
    ("rollout.top_p=0.95", "rollout.top_p / top_k: LLaDA's decoder samples the full distribution"),
    ("rollout.steps=3", "rollout.steps 3: must be a multiple of the 2 blocks"),
    ("model.gradient_checkpointing=true", "model.gradient_checkpointing=true: not yet for a LLaDA model"),
])
def test_what_llada_cannot_do_yet_is_a_user_error_naming_the_key(llada_dir, override, message):
    cfg = load_config(REPO / "configs" / "demo.yaml", [*SMALL, *LLADA, f"model.path={llada_dir}", override])
    with pytest.raises(UserError, match=re.escape(message)):
        check_model_kind(cfg)
    check_model_kind(load_config(REPO / "configs" / "demo.yaml", [*SMALL, *LLADA, f"model.path={llada_dir}"]))
