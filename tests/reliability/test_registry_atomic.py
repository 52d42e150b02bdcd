"""Registry writes are atomic: a crash at any point of ``publish`` leaves ``latest`` on the previous complete
version and no partial ``vNNNN`` directory; the next publish works.

Crashes are simulated in process (an exception partway through the copy or a rename) and for real (a child
process killed with SIGKILL halfway through copying, where no cleanup code can run).
"""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from convfm.store.artifacts import save_model_dir, verify_model_dir
from convfm.store.registry import LATEST, STALE_AFTER_S, publish, resolve, versions

pytestmark = pytest.mark.timeout(120)


class Crash(Exception):
    pass


@pytest.fixture
def entry(tiny, tmp_path):
    """A registry copy holding tiny v0001 (latest)."""
    shutil.copytree(tiny.registry, tmp_path / "registry")
    return tmp_path / "registry" / "tiny"


def assert_intact(entry: Path, latest: str = "v0001", published: tuple[str, ...] = ("v0001",)) -> None:
    assert (entry / LATEST).read_text().strip() == latest
    assert resolve(entry).name == latest
    assert versions(entry) == list(published)
    for version in versions(entry):  # every visible version is complete
        verify_model_dir(entry / version)


def partial_copytree(src, dst, *args, **kwargs):
    """Copy half the files, then crash: what a full disk or a killed process leaves."""
    os.makedirs(dst, exist_ok=True)
    files = sorted(p for p in Path(src).iterdir() if p.is_file())
    for path in files[: len(files) // 2]:
        shutil.copy2(path, Path(dst) / path.name)
    raise Crash("disk full halfway through the copy")


def failing_replace_of(target: str):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == target or (target == "vNNNN" and Path(dst).name.startswith("v")):
            raise Crash(f"crash renaming {src} -> {dst}")
        return real(src, dst, *args, **kwargs)

    return replace


@pytest.mark.parametrize("where", ["copy", "rename-version", "rename-latest"])
def test_crash_mid_publish_keeps_latest_on_the_last_complete_version(entry, tiny, monkeypatch, where):
    if where == "copy":
        monkeypatch.setattr(shutil, "copytree", partial_copytree)
    else:
        monkeypatch.setattr(os, "replace", failing_replace_of("vNNNN" if where == "rename-version" else LATEST))
    with pytest.raises(Crash):
        publish(tiny.model_dir, entry.parent, entry.name)
    monkeypatch.undo()
    if where == "rename-latest":  # v0002 was complete and renamed into place; only the pointer move failed
        assert_intact(entry, latest="v0001", published=("v0001", "v0002"))
    else:
        assert_intact(entry)
        assert not [p.name for p in entry.iterdir() if p.name.startswith(".v")], "staging dir left behind"
    assert publish(tiny.model_dir, entry.parent, entry.name).name == versions(entry)[-1]
    assert resolve(entry).name == versions(entry)[-1] != "v0001"


KILLED = textwrap.dedent("""
    import os, shutil, sys, time
    from pathlib import Path
    from convfm.store.registry import publish

    def slow_copytree(src, dst, *args, **kwargs):
        os.makedirs(dst, exist_ok=True)
        for i, path in enumerate(sorted(Path(src).iterdir())):
            shutil.copy2(path, Path(dst) / path.name)
            if i == 2:
                print("copying", flush=True)
                time.sleep(60)  # killed here

    shutil.copytree = slow_copytree
    publish(sys.argv[1], sys.argv[2], sys.argv[3])
""")


def test_publish_killed_mid_copy_leaves_no_partial_version(entry, tiny):
    child = subprocess.Popen([sys.executable, "-c", KILLED, str(tiny.model_dir), str(entry.parent), entry.name],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "copying"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    leftovers = [p.name for p in entry.iterdir() if p.name.startswith(".v0002.")]
    assert leftovers, "the kill was meant to land mid-copy, leaving the hidden staging dir"
    assert_intact(entry)  # the hidden staging dir is not a version and latest is untouched
    (entry / ".latest.0123abcd.tmp").write_text("v0002\n")  # what a kill while moving the pointer leaves
    assert publish(tiny.model_dir, entry.parent, entry.name).name == "v0002"
    assert_intact(entry, latest="v0002", published=("v0001", "v0002"))
    fresh = sorted(p.name for p in entry.iterdir() if p.name.startswith("."))
    assert fresh == sorted([*leftovers, ".latest.0123abcd.tmp"]), "young leftovers may be a publish in progress"
    old = time.time() - STALE_AFTER_S - 60
    for path in entry.iterdir():
        os.utime(path, (old, old))
        for inner in path.iterdir() if path.is_dir() else ():
            os.utime(inner, (old, old))
    (entry / ".notes").write_text("someone's own file")  # hidden, but not a staging name: kept
    assert publish(tiny.model_dir, entry.parent, entry.name).name == "v0003"
    assert sorted(p.name for p in entry.iterdir() if p.name.startswith(".")) == [".notes"]
    assert_intact(entry, latest="v0003", published=("v0001", "v0002", "v0003"))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_published_versions_follow_the_umask(entry, tiny, umask):
    """mkdtemp/mkstemp make 0700/0600: a registry shared by a group would be readable only by the publisher."""
    previous = os.umask(umask)
    try:
        version = publish(tiny.model_dir, entry.parent, entry.name)
        exported = save_model_dir(entry.parent / "export", tiny.model, tiny.data.extractor)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(version.stat().st_mode) == stat.S_IMODE(exported.stat().st_mode) == 0o777 & ~umask
    for path in [*version.iterdir(), entry / LATEST, *exported.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
