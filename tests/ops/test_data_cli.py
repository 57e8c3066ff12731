"""`diffurl data convert|inspect`, and the dataset refusals of `train`, `submit`, `eval` and `data`: one line,
exit 2, before Ray or Redis start."""
import json

import pytest
import ray

from orchestrator import cli
from orchestrator import redis_server
from tests.orchestrator.test_data_formats import MBPP, write_case, write_rows


@pytest.fixture
def nothing_starts(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("started before the dataset was checked")

    monkeypatch.setattr(ray, "init", boom)
    monkeypatch.setattr(redis_server.EmbeddedRedis, "__init__", boom)


def test_inspect_prints_the_format_rows_skips_and_tests_per_problem(tmp_path, capsys):
    path = write_rows(tmp_path / "mbpp.jsonl", [MBPP, {"task_id": 9, "text": "t", "code": "x = 1", "test_list": []}])
    assert cli.main(["data", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "MBPP (original) (mbpp)" in out and "rows: 2, problems: 1, skipped: 1" in out
    assert "skipped 1: test_list is not a non-empty list of strings" in out
    assert "tests per problem: min 2, median 2, max 2" in out


def test_convert_writes_training_jsonl(tmp_path, capsys):
    src = write_case(tmp_path, "humaneval+")
    assert cli.main(["data", "convert", str(src), "--to", str(tmp_path / "out.jsonl")]) == 0
    assert "wrote 1 problems" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.jsonl").read_text())["task_id"] == "HumanEval/901"


def refusals(tmp_path):
    unknown = write_rows(tmp_path / "unknown.jsonl", [{"task_id": "x", "body": "y"}])
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    processed = write_case(tmp_path, "acecode-hard")
    return [
        (["data", "inspect", str(unknown)], "no known format fits its columns (task_id, body)"),
        (["data", "convert", str(processed), "--to", str(tmp_path / "o.jsonl"), "--hard-subset"],
         "--hard-subset:"),
        (["data", "convert", str(processed), "--to", str(tmp_path / "o.jsonl"), "--format", "mbpp"],
         "--format=mbpp needs the columns"),
        (["train", "configs/demo.yaml", f"data.train={unknown}"], "no known format fits its columns"),
        (["train", "configs/demo.yaml", "data.format=nope"], "data.format=nope: unknown format"),
        (["submit", "configs/demo.yaml", f"data.train={unknown}", "--address", "http://127.0.0.1:9"],
         "no known format fits its columns"),
        (["eval", str(model), "--problems", str(unknown), "--device", "cpu"], "no known format fits its columns"),
        (["eval", str(model), "--problems", str(processed), "--format", "humaneval", "--device", "cpu"],
         "--format=humaneval needs the columns"),
    ]


def test_every_refusal_is_one_line_exit_2_before_anything_starts(tmp_path, capsys, nothing_starts):
    for argv, expected in refusals(tmp_path):
        rc = cli.main(argv)
        err = capsys.readouterr().err
        assert rc == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith("diffurl: error: ") and expected in err, (argv, err)
        assert not ray.is_initialized()
