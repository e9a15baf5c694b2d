"""Writing emitted files without harming anything else (issue 15 item 5).

* Atomic: the whole folder is built in a fresh temporary folder beside the target (``mkdtemp``: a new
  name, created exclusively, so nothing planted there can be written through), then renamed into place;
  a failure part-way leaves the target as it was.
* No symlinks followed: the target folder must not be a symlink, and a file the tool is about to
  replace is replaced by ``rename`` (which swaps the link itself), never opened.
* ``DIR/MANIFEST`` lists the files written (and which plan each set holds). ``force`` replaces and
  removes only files an earlier MANIFEST lists; any other file in the folder is the user's and stays
  (and blocks a file of the same name).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from configurator.errors import InputError

MANIFEST = "MANIFEST"
HEADER = "# Written by configurator emit. `--force` replaces or removes only the files listed here."


def check_out_dir(out_dir: Path, *, force: bool, field: str = "out") -> None:
    """Refuse a target the tool may not write, before any search runs."""
    if out_dir.is_symlink():
        raise InputError(field, str(out_dir), "is a symbolic link; give the real folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(field, str(out_dir), "is a file, not a folder")
    parent = out_dir.parent
    if not parent.exists():
        pass  # created on write (mkdir -p)
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(field, str(out_dir), f"cannot be created: {parent} is not writable")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise InputError(field, str(out_dir), "is not empty; pass --force to replace the files configurator wrote there")


def read_manifest(out_dir: Path) -> set[str]:
    """File names an earlier emit wrote into ``out_dir`` (plain names only; a symlinked MANIFEST counts as none)."""
    path = out_dir / MANIFEST
    if path.is_symlink() or not path.is_file():
        return set()
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return set()
    return {line for line in lines if line and not line.startswith("#") and ":" not in line
            and "/" not in line and line not in (".", "..")}


def _write_new(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def write_folder(out_dir: Path, files: dict[str, str], held: list[str], *, force: bool) -> list[Path]:
    """Write ``files`` (name -> text) and a MANIFEST into ``out_dir`` atomically; return the paths written."""
    check_out_dir(out_dir, force=force)
    ours = read_manifest(out_dir) if out_dir.exists() else set()
    present = {p.name for p in out_dir.iterdir()} if out_dir.exists() else set()
    foreign = present - ours - {MANIFEST}
    for name in files:
        if name in foreign:
            raise InputError("out", str(out_dir / name), "exists and configurator did not write it "
                             "(not in MANIFEST); move it away")
    if MANIFEST in present and (out_dir / MANIFEST).is_symlink():
        raise InputError("out", str(out_dir / MANIFEST), "is a symbolic link; remove it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for name, text in files.items():
            _write_new(staging / name, text, 0o755 if name.endswith((".sh", ".sbatch")) else 0o644)
        _write_new(staging / MANIFEST, "\n".join([HEADER, *(f"# {h}" for h in held), *files]) + "\n", 0o644)
        if not present:
            if out_dir.exists():
                out_dir.rmdir()  # empty: the rename below puts the whole folder in place at once
            os.rename(staging, out_dir)
        elif not foreign:
            # Only our files: swap the folders (two renames), then drop the old one.
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.rename(out_dir, old / "d")
            os.rename(staging, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            # The user's files live here too: replace ours one by one (each rename is atomic) and
            # remove the stale ones of an earlier emit; the MANIFEST goes last.
            for name in files:
                os.replace(staging / name, out_dir / name)
            for stale in sorted(ours - set(files)):
                path = out_dir / stale
                if path.is_symlink() or path.is_file():
                    path.unlink()
            os.replace(staging / MANIFEST, out_dir / MANIFEST)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / name for name in files] + [out_dir / MANIFEST]


def write_file_atomic(path: Path, text: str) -> None:
    """One file (``explain --svg``): a fresh temporary beside it, then rename; a symlink at ``path`` is
    replaced, never written through."""
    if path.is_dir():
        raise InputError("svg", str(path), "is a folder")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["MANIFEST", "check_out_dir", "read_manifest", "write_file_atomic", "write_folder"]
