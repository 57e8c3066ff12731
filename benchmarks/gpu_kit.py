"""The GPU kit: what a bare GPU node (no package index, Python packages of its own) lacks to run diffurl, built
here into one ignored folder that travels with the working tree (64 MiB a call) or to an air-gapped cluster.

    .venv/bin/python benchmarks/gpu_kit.py                      # .gpu-kit/ for CPython 3.12, manylinux x86-64
    .venv/bin/python benchmarks/gpu_kit.py --python-version 3.11 --out .gpu-kit-311
    .venv/bin/python benchmarks/gpu_kit.py --plan               # what it would ship, and nothing else
    bash benchmarks/gpu_check.sh --kit .gpu-kit                 # on the node: install it in a temp dir and check

What it ships: every distribution diffurl's requirements reach (at the versions of the venv that runs this, the
versions our tests pass with) that benchmarks/gpu_node_packages.txt does not list; the walk stops at a listed
package, whose own requirements the node already satisfies, and at torch, which always comes from the node. As
  wheels/    binary wheels for the target Python, downloaded here; DeepSpeed built here as a pure-Python wheel
             (DS_BUILD_OPS=0: its ops compile on the node, just in time, if a section asks for one)
  ray-<version>-<tag>.tar.xz
             Ray's wheel unpacked, less ray/jars (Java workers), ray/rllib and the other libraries diffurl never
             imports (SLIM_RAY), its RECORD rewritten to match, packed with xz -9: 26 MiB instead of 76
  lib/       libseccomp.so.2 from this machine (the sandbox's pyseccomp loads it with ctypes; not a Python package)
  MANIFEST.txt  the target, each component's size, and the installer's two lines
The node installs it with pip --no-index --no-deps --target and tar (benchmarks/gpu_check.sh --kit DIR does).
"""
from __future__ import annotations

import argparse
import ctypes.util
import importlib.metadata as md
import io
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parent.parent
NODE_PACKAGES = REPO_ROOT / "benchmarks" / "gpu_node_packages.txt"
LIMIT_MIB = 56.0  # the working tree plus carried paths travel 64 MiB a call; the repo itself needs the rest
SPECIAL = {"ray", "deepspeed"}  # slimmed / built here rather than downloaded as they are
NEVER = {"torch"}  # the node's own, built for its CUDA: never shipped, even when the node list is empty
SLIM_RAY = ("ray/jars", "ray/rllib", "ray/tune", "ray/train", "ray/serve", "ray/data", "ray/llm", "ray/air",
            "ray/workflow", "ray/cpp", "ray/includes", "ray/tests")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def node_packages(path: Path = NODE_PACKAGES) -> dict[str, str | None]:
    """name -> pinned version (None where the node's version is not known) of the node's packages."""
    found: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[canonicalize_name(name)] = version or None
    return found


def closure(roots: list[Requirement], installed, stop: set[str]) -> dict[str, str]:
    """name -> version of every distribution `roots` reach, by `installed(name)` (an importlib.metadata
    Distribution, or None when absent), with each requirement's extras and markers honoured, not walking into the
    names in `stop` (nor listing them)."""
    reached: dict[str, str] = {}
    walked: set[tuple[str, frozenset]] = set()
    todo = [(r, frozenset(r.extras)) for r in roots]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if name in stop or (name, extras) in walked:
            continue
        walked.add((name, extras))
        dist = installed(name)
        if dist is None:
            raise SystemExit(f"gpu_kit: {name} (needed by diffurl) is not installed in {sys.prefix}; "
                             f"run `make install` and build the kit with .venv/bin/python")
        reached[name] = dist.version
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append((sub, frozenset(sub.extras)))
    return reached


def _installed(name: str):
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        return None


def plan() -> dict[str, str]:
    """What the kit ships: diffurl's closure in this venv, less the node's packages."""
    root = _installed("diffurl")
    if root is None:
        raise SystemExit("gpu_kit: diffurl is not installed here; run `make install` and use .venv/bin/python")
    roots = [Requirement(r) for r in root.requires or [] if "extra ==" not in r]
    return dict(sorted(closure(roots, _installed, set(node_packages()) | NEVER).items()))


def node_requirements() -> list[str]:
    """The node's packages that diffurl reaches (directly or through its requirements), pinned where the node's
    version is known: what benchmarks/simulated_device.sh installs to stand in for the node."""
    root = _installed("diffurl")
    roots = [Requirement(r) for r in root.requires or [] if "extra ==" not in r]
    node = node_packages()
    reached = closure(roots, _installed, stop=set())
    return [f"{n}=={node[n]}" if node[n] else n for n in sorted(set(reached) & set(node) | {
        n for n, v in node.items() if v})]


def not_on_node(dists=None) -> list[str]:
    """Distributions installed in this Python (a simulated node's venv) that the node does not have."""
    node = node_packages()
    names = {canonicalize_name(d.metadata["Name"]) for d in (dists if dists is not None else md.distributions())}
    return sorted(names - set(node) - {"pip", "setuptools", "wheel"})


def _pip(*args: str, **kwargs) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True, **kwargs)


def _target(python_version: str) -> list[str]:
    tag = python_version.replace(".", "")
    return ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
            "--abi", f"cp{tag}", "--abi", "abi3", "--abi", "none",
            *[a for p in PLATFORMS for a in ("--platform", p)], "--platform", "any"]


def download_wheels(pins: dict[str, str], python_version: str, dest: Path) -> None:
    _pip("download", "--quiet", "--no-deps", "-d", str(dest), *_target(python_version),
         *[f"{n}=={v}" for n, v in pins.items()])


def build_deepspeed(version: str, dest: Path) -> Path:
    """DeepSpeed publishes only a source release; its pure-Python wheel (no ops compiled) is built here."""
    env = dict(os.environ, DS_BUILD_OPS="0")
    _pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dest), f"deepspeed=={version}", env=env)
    (wheel,) = dest.glob("deepspeed-*.whl")
    if not wheel.name.endswith("-py3-none-any.whl"):
        raise SystemExit(f"gpu_kit: the DeepSpeed wheel is {wheel.name}, not pure Python; DS_BUILD_OPS=0 unheeded?")
    return wheel


def slim_ray(version: str, python_version: str, dest: Path, work: Path) -> Path:
    """Ray's wheel for the target, slimmed (pack_slim)."""
    _pip("download", "--quiet", "--no-deps", "-d", str(work), *_target(python_version), f"ray=={version}")
    (wheel,) = work.glob("ray-*.whl")
    return pack_slim(wheel, dest / (wheel.name[: -len(".whl")] + ".slim.tar.xz"), SLIM_RAY)


def pack_slim(wheel: Path, out: Path, drop: tuple[str, ...]) -> Path:
    """A wheel's files less the folders `drop`, its RECORD rewritten to match, as a tar.xz (xz -9) to unpack into
    a site folder: what pip would have installed, file modes (the executables) kept."""
    dropped = tuple(p.rstrip("/") + "/" for p in drop)
    with zipfile.ZipFile(wheel) as z, lzma.open(out, "wb", preset=9) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        for info in z.infolist():
            if info.is_dir() or info.filename.startswith(dropped):
                continue
            data = z.read(info)
            if re.fullmatch(r"[^/]+\.dist-info/RECORD", info.filename):
                data = "".join(line for line in data.decode().splitlines(keepends=True)
                               if not line.startswith(dropped)).encode()
            member = tarfile.TarInfo(info.filename)
            member.size, member.mtime = len(data), time.mktime(info.date_time + (0, 0, -1))
            member.mode = (info.external_attr >> 16) & 0o777 or 0o644
            tar.addfile(member, io.BytesIO(data))
    return out


def copy_libseccomp(dest: Path) -> Path:
    found = ctypes.util.find_library("seccomp")
    candidates = [Path(d) / (found or "libseccomp.so.2") for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
                                                                    "/usr/lib64", "/lib64")]
    source = next((c for c in candidates if c.exists()), None)
    if source is None:
        raise SystemExit("gpu_kit: libseccomp.so.2 not found on this machine (the sandbox needs it on the node)")
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "libseccomp.so.2"
    shutil.copyfile(source.resolve(), target)
    return target


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def build(out: Path, python_version: str, limit_mib: float) -> None:
    t0 = time.monotonic()
    pins = plan()
    missing = SPECIAL - set(pins)
    if missing:
        raise SystemExit(f"gpu_kit: {sorted(missing)} not among diffurl's requirements; the kit would be wrong")
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "wheels").mkdir(parents=True)
    print(f"gpu_kit: {len(pins)} distributions for CPython {python_version}, manylinux x86-64 -> {out}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        print("gpu_kit: downloading wheels", flush=True)
        download_wheels({n: v for n, v in pins.items() if n not in SPECIAL}, python_version, tmp / "wheels")
        print("gpu_kit: building DeepSpeed's pure-Python wheel (DS_BUILD_OPS=0)", flush=True)
        build_deepspeed(pins["deepspeed"], tmp / "wheels")
        print(f"gpu_kit: slimming Ray (less {', '.join(SLIM_RAY)}) and packing it with xz -9", flush=True)
        ray_tar = slim_ray(pins["ray"], python_version, tmp, Path(work))
        copy_libseccomp(tmp / "lib")
    sizes = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    total = sum(sizes.values())
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])
    lines = [f"diffurl GPU kit, built {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by benchmarks/gpu_kit.py",
             f"target: CPython {python_version}, manylinux x86-64 (cp{python_version.replace('.', '')})",
             f"total: {_mib(total)} in {len(sizes)} files",
             "install (benchmarks/gpu_check.sh --kit does this):",
             "  python3 -m pip install --no-index --no-deps --no-compile --target SITE wheels/*.whl",
             f"  tar -xJf {ray_tar.name} -C SITE; PYTHONPATH=REPO:SITE LD_LIBRARY_PATH=KIT/lib",
             "components, largest first:", *[f"  {_mib(n):>10}  {name}" for name, n in largest]]
    (tmp / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
    if total > limit_mib * 2**20:
        raise SystemExit(f"gpu_kit: the kit is {_mib(total)}, over the {limit_mib:g} MiB limit; see "
                         f"{tmp / 'MANIFEST.txt'}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print("\n".join(lines[:3] + lines[6:]))
    print(f"gpu_kit: built in {time.monotonic() - t0:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.12", help="the node's CPython, major.minor (default 3.12)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".gpu-kit", help="the kit's folder (.gpu-kit)")
    parser.add_argument("--limit-mib", type=float, default=LIMIT_MIB, help=f"size limit (default {LIMIT_MIB:g})")
    parser.add_argument("--plan", action="store_true", help="print what the kit would ship, and stop")
    parser.add_argument("--node-requirements", action="store_true",
                        help="print the node's packages that diffurl reaches (a simulated node's venv), and stop")
    parser.add_argument("--not-on-node", action="store_true",
                        help="print the distributions this Python has that the node does not, and stop")
    args = parser.parse_args()
    if args.node_requirements:
        print("\n".join(node_requirements()))
        return
    if args.not_on_node:
        print("\n".join(not_on_node()))
        return
    if not re.fullmatch(r"3\.\d+", args.python_version):
        print(f"gpu_kit: --python-version {args.python_version!r}: expected major.minor, such as 3.12",
              file=sys.stderr)
        sys.exit(2)
    if args.plan:
        for name, version in plan().items():
            print(f"{name}=={version}")
        return
    build(args.out.resolve(), args.python_version, args.limit_mib)


if __name__ == "__main__":
    main()
