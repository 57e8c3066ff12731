"""The sandbox interpreter's files, copied once into a tmpfs and bound into every sandbox in place of the disk's.

Why: the pages of a disk file in the host's page cache are shared by every process on the machine. Two
sandboxes that can read the same disk file can signal to each other through which of its pages are cached
(evict a page or leave it, then probe or time it): a covert channel across samples, slots and restarts, which
lets a program learn a test's expected values from the verdicts of earlier samples. The pages of a tmpfs file
are always in memory (the sandbox machines run without swap): there is nothing to evict and nothing to probe.

What is copied: the interpreter, its ELF loader, the shared libraries it maps at start-up, its standard library
(stdlib and platstdlib, `__pycache__` included), and the libraries its extension modules load (the loader's
`--list`), each at its absolute path, with the symlinks on the way recreated (soname links such as
`libbz2.so.1.0 -> libbz2.so.1.0.4`, `/usr/lib64/ld-linux-x86-64.so.2 -> ../lib/...`); top-level links such as
`/lib -> usr/lib` are bwrap's `--symlink`s. A link that leaves /usr, /lib* and /bin (the stdlib's
`sitecustomize.py -> /etc/...`) stays dangling, as it was with the disk's directories bound. Nothing else of
the host is visible in a sandbox.

Where: `/dev/shm/diffurl-sandbox-<uid>/<key>/`, key = SHA-256 of the interpreter's and the stdlib directories'
paths, sizes and modification times (a new Python or a changed stdlib gets a new copy; finding the current one
costs a few stats). It is written into a staging directory and renamed into place (readers never see half a
copy; concurrent installers agree), `COMPLETE` inside it. Owned by this uid and writable by no one else (0755
directories for the slot uids as root; 0700 for the base without root): only its owner could change what
sandboxes execute, and that owner is the one running them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

TMPFS_MAGIC = 0x01021994
TOPS = ("usr", "lib", "lib64", "lib32", "libx32", "bin")  # what an interpreter's files may lie under
BASE = "/dev/shm"
MARKER = "COMPLETE"


class CopyError(OSError):
    """No tmpfs copy can be made or trusted here; the message says why."""


def plan(interpreter: str, loader: str | None, libraries: list[str], stdlib_dirs: list[str]) -> dict[str, tuple]:
    """Relative path in the copy -> ("file", source path) or ("link", link target), for everything the
    interpreter needs (see the module docstring)."""
    entries: dict[str, tuple] = {}
    sources = [interpreter, *([loader] if loader else []), *libraries]
    for directory in stdlib_dirs:
        for top, dirs, names in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "dist-packages"))
            sources += [os.path.join(top, n) for n in sorted(names)]
    extensions = [s for s in sources if s.endswith(".so") and "lib-dynload" in s]
    if loader:  # as the loader names them (by soname: libz.so.1, a link to libz.so.1.2.13)
        sources += _dependencies(loader, [interpreter, *extensions])
    for source in sources:
        _replicate(source, entries)
    return entries


def _dependencies(loader: str, binaries: list[str]) -> list[str]:
    """The shared libraries the loader resolves for `binaries` (paths as it names them)."""
    found = []
    for binary in binaries:
        try:
            listing = subprocess.run([loader, "--list", binary], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in listing.splitlines():
            _, arrow, resolved = line.partition(" => ")
            library = resolved.rsplit(" (", 1)[0].strip()
            if arrow and library.startswith("/"):
                found.append(library)
    return sorted(set(found))


def _replicate(path: str, entries: dict[str, tuple], depth: int = 0) -> None:
    """Record `path` (absolute) in `entries`, following symlinks component by component: a link below the top
    level is recorded as a link and its target replicated too; a top-level link (/lib -> usr/lib) only
    followed (bwrap recreates those). Paths outside TOPS are left out."""
    if depth > 40:
        raise CopyError(errno.ELOOP, f"too many symlinks on the way to {path}")
    parts = Path(path).parts[1:]
    if not parts or parts[0] not in TOPS:
        return
    current = Path("/")
    for i, part in enumerate(parts):
        following = current / part
        if following.is_symlink():
            target = os.readlink(following)
            if current != Path("/"):
                entries[str(following.relative_to("/"))] = ("link", target)
            rest = os.path.normpath(os.path.join(str(current), target, *parts[i + 1:]))
            _replicate(rest, entries, depth + 1)
            return
        current = following
    if current.is_file():
        entries[str(current.relative_to("/"))] = ("file", str(current))


def key(interpreter: str, stdlib_dirs: list[str]) -> str:
    """Names the copy: changes with the interpreter binary and with any stdlib directory's entries."""
    stats = []
    for path in [interpreter, *stdlib_dirs, *(os.path.join(d, "lib-dynload") for d in stdlib_dirs)]:
        if os.path.exists(path):
            st = os.stat(path)
            stats.append([path, st.st_size, st.st_mtime_ns, st.st_ino])
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def install(interpreter: str, loader: str | None, libraries: list[str], stdlib_dirs: list[str],
            base: str = BASE) -> Path:
    """The root of a complete, trusted tmpfs copy of the interpreter's files (made now if there is none);
    CopyError when there is no usable tmpfs at `base` or the copy cannot be made."""
    try:
        if os.statvfs(base).f_flag & os.ST_NOEXEC or _fs_type(base) != TMPFS_MAGIC:
            raise CopyError(errno.EACCES, f"{base} is not an exec-allowed tmpfs")
        root = Path(base) / f"diffurl-sandbox-{os.geteuid()}"
        _owned_dir(root, 0o755 if os.geteuid() == 0 else 0o700)
        target = root / key(interpreter, stdlib_dirs)
        if (target / MARKER).is_file():
            _check_owned(target)
            return target
        entries = plan(interpreter, loader, libraries, stdlib_dirs)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
        try:
            os.chmod(staging, 0o755)
            for rel, (kind, value) in sorted(entries.items()):
                _write(staging, rel, kind, value)
            (staging / MARKER).write_text(json.dumps(sorted(entries)))
            try:
                os.rename(staging, target)
            except OSError as exc:  # another installer came first: its copy is the same
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not (target / MARKER).is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _check_owned(target)
        return target
    except CopyError:
        raise
    except OSError as exc:
        raise CopyError(exc.errno or errno.EIO, f"cannot copy the interpreter into {base}: {exc}") from None


def _write(root: Path, rel: str, kind: str, value: str) -> None:
    path = root / rel
    for directory in reversed(path.relative_to(root).parents[:-1]):
        (root / directory).mkdir(mode=0o755, exist_ok=True)
        os.chmod(root / directory, 0o755)
    if kind == "link":
        if not path.is_symlink():
            os.symlink(value, path)
        return
    if path.exists():
        return
    shutil.copyfile(value, path, follow_symlinks=False)
    os.chmod(path, 0o755 if os.stat(value).st_mode & 0o111 else 0o644)


def _owned_dir(path: Path, mode: int) -> None:
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    _check_owned(path)
    os.chmod(path, mode)


def _check_owned(path: Path) -> None:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise CopyError(errno.EACCES, f"{path} is not a directory of uid {os.geteuid()} that only it writes")


def _fs_type(path: str) -> int:
    """statfs(2)'s f_type (Python's statvfs does not give it)."""
    import ctypes

    buffer = (ctypes.c_long * 32)()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(path.encode(), buffer) != 0:
        raise OSError(ctypes.get_errno(), f"statfs {path}")
    return buffer[0]
