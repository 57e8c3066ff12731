"""Root-owned copies of the files a slot uid executes, so the sandbox works wherever the project is checked out.

A slot uid must execute bwrap (and load the libraries bundled with it); the venv that ships bwrap lives inside
the checkout, often under a 0700 directory (`mktemp -d`, a home directory) that the slot uid cannot traverse.
`install` copies such files into `<base>/<digest>/`, where base is the first of RUNTIME_BASES that is usable:

- base and every directory above it are real directories owned by root, writable by no one else, and
  traversable by all; base itself is mode 0755 and on a mount that allows exec;
- `<digest>` is the SHA-256 of the manifest (relative path, SHA-256 and mode of every file), so each set of
  contents has its own directory: directories 0755, files 0755 or 0644 as asked, all owned by root;
- an existing `<digest>` directory is used only if it holds exactly those files with exactly those hashes,
  modes and owner; anything else (tampered, truncated, extra files, symlinks) is removed and installed again;
- a new copy is written into a private temporary directory, verified, then renamed into place, so a reader
  never sees half a copy and concurrent installers (one per worker process) agree on the result.

Only root can write under base, so what was verified stays what the slot uid executes. Without root there is
no slot uid and nothing to copy: isolation.bwrap_binary uses the venv's bwrap directly.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
RUNTIME_BASES = ("/var/lib/diffurl-sandbox", "/run/diffurl-sandbox")
DIR_MODE = 0o755


class RuntimeDirError(OSError):
    """A base directory cannot be trusted or used; the message says why."""


def install(files: dict[str, tuple[bytes, int]], bases: tuple[str, ...] = RUNTIME_BASES) -> Path:
    """Verified root-owned copy of `files` (relative path -> (content, mode)); the directory holding them.

    RuntimeDirError naming every base tried when none can be used.
    """
    reasons = []
    for base in bases:
        try:
            return _install_under(Path(base), files)
        except OSError as exc:
            reasons.append(f"{base}: {exc.strerror if isinstance(exc, RuntimeDirError) else exc}")
    raise RuntimeDirError(errno.EACCES, "no root-owned runtime directory for the sandbox: " + "; ".join(reasons))


def digest(files: dict[str, tuple[bytes, int]]) -> str:
    manifest = sorted((rel, hashlib.sha256(content).hexdigest(), mode) for rel, (content, mode) in files.items())
    return hashlib.sha256(json.dumps(manifest).encode()).hexdigest()


def _install_under(base: Path, files: dict[str, tuple[bytes, int]]) -> Path:
    _trusted_base(base)
    target = base / digest(files)
    if target.exists() or target.is_symlink():
        if _matches(target, files):
            return target
        log.warning("sandbox runtime copy %s does not match its sources: replacing it", target)
        _remove(target, base)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=base))
    try:
        os.chmod(staging, DIR_MODE)
        for rel, (content, mode) in files.items():
            _write(staging, rel, content, mode)
        if not _matches(staging, files):
            raise RuntimeDirError(errno.EIO, f"copy in {staging} does not read back as written")
        try:
            os.rename(staging, target)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if not _matches(target, files):  # another process installed first; its copy must match too
                raise RuntimeDirError(errno.EEXIST, f"{target} appeared and does not match its sources") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _trusted_base(base: Path) -> None:
    """Create base (root, 0755) if missing; RuntimeDirError unless base and its parents are safe as above."""
    if os.geteuid() != 0:
        raise RuntimeDirError(errno.EPERM, "only root installs the sandbox runtime")
    for parent in reversed(base.parents):
        st = os.lstat(parent)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022 or not st.st_mode & 0o001:
            raise RuntimeDirError(errno.EACCES, f"{parent} is not a root-owned directory that only root writes "
                                                f"and anyone traverses (mode {stat.filemode(st.st_mode)})")
    try:
        os.mkdir(base, DIR_MODE)
    except FileExistsError:
        pass
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise RuntimeDirError(errno.EACCES, f"exists but is not a root-owned directory that only root writes "
                                            f"(mode {stat.filemode(st.st_mode)}, uid {st.st_uid})")
    os.chmod(base, DIR_MODE)  # mkdir honours the umask
    if os.statvfs(base).f_flag & os.ST_NOEXEC:
        raise RuntimeDirError(errno.EACCES, "is on a noexec mount")


def _write(root: Path, rel: str, content: bytes, mode: int) -> None:
    path = root / rel
    for directory in reversed(path.relative_to(root).parents[:-1]):
        (root / directory).mkdir(exist_ok=True)
        os.chmod(root / directory, DIR_MODE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, content)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def _matches(root: Path, files: dict[str, tuple[bytes, int]]) -> bool:
    """root holds exactly `files`: regular files and directories only, all root's, modes and hashes equal."""
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or stat.S_IMODE(st.st_mode) != DIR_MODE:
        return False
    found = set()
    for directory, subdirs, names in os.walk(root):
        for name in subdirs:
            st = os.lstat(os.path.join(directory, name))
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or stat.S_IMODE(st.st_mode) != DIR_MODE:
                return False
        for name in names:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if rel not in files or not stat.S_ISREG(st.st_mode) or st.st_uid != 0:
                return False
            content, mode = files[rel]
            if stat.S_IMODE(st.st_mode) != mode or _sha256(path) != hashlib.sha256(content).digest():
                return False
            found.add(rel)
    return found == set(files)


def _sha256(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").digest()


def _remove(target: Path, base: Path) -> None:
    """Move target aside (atomic for readers), then delete it; it may already be gone (a concurrent installer)."""
    aside = Path(tempfile.mkdtemp(prefix=".stale-", dir=base))
    try:
        os.rename(target, aside / "old")
    except FileNotFoundError:
        pass
    shutil.rmtree(aside, ignore_errors=True)
