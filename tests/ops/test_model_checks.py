"""A wrong or half-downloaded model directory is refused in one line before anything starts (issue 24, item 5):
it used to start Ray and every worker, then exit 1 after 36 s with ~190 lines of traceback."""
import json
import shutil

import pytest
import ray

from actors.dllm.model import save_model
from orchestrator.cli import main
from tests.tiny_model import build_tiny


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model(*build_tiny(), path)
    return path


@pytest.fixture
def nothing_starts(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called: the refusal must come before Ray starts")
    monkeypatch.setattr(ray, "init", refuse)


def broken_copy(model_dir, tmp_path, how: str):
    path = tmp_path / how
    shutil.copytree(model_dir, path)
    weights = path / "model.safetensors"
    if how == "llama":
        config = json.loads((path / "config.json").read_text())
        config.update(model_type="llama", architectures=["LlamaForCausalLM"])
        config.pop("mask_token_id")
        (path / "config.json").write_text(json.dumps(config))
    elif how == "no-weights":
        weights.unlink()
    elif how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif how == "missing-shard":
        weights.rename(path / "model-00001-of-00002.safetensors")
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    return path


@pytest.mark.parametrize("how, message", [
    ("llama", "config.json has model_type 'llama'; diffurl serves Dream/DiffuCoder"),
    ("no-weights", "has a config.json but no weights"),
    ("truncated", "model.safetensors is "),
    ("missing-shard", "1 of the 2 weight files model.safetensors.index.json lists are missing (first: "
                      "model-00002-of-00002.safetensors)"),
])
def test_a_broken_model_directory_is_one_line_exit_2_and_no_run_directory(model_dir, tmp_path, capsys,
                                                                         nothing_starts, how, message):
    path = broken_copy(model_dir, tmp_path, how)
    runs = tmp_path / "runs"
    assert main(["train", "configs/demo.yaml", f"model.path={path}", f"run.root_dir={runs}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"diffurl: error: model.path={path}: ") and message in lines[0]
    assert not runs.exists()


def test_a_whole_model_directory_passes_the_checks(model_dir, tmp_path, capsys):
    assert main(["train", "configs/demo.yaml", f"model.path={model_dir}", "--dry-run"]) == 0
    from orchestrator.config import check_model_weights

    check_model_weights(model_dir)  # raises nothing
