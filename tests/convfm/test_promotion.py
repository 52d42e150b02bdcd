"""Promote and roll back (``convfm models``) on a tmp registry: ``latest`` moves, the history only grows,
publish stops moving ``latest`` once an entry is promoted, and errors are one line naming the problem."""
from __future__ import annotations

import json
import re

import pytest

from convfm.cli.main import main
from convfm.errors import ArtifactError
from convfm.store.artifacts import ARTIFACT_VERSION, CORE_FILES
from convfm.store.checksums import sha256_file
from convfm.store.registry import HISTORY, locate, promote, promoted_stack, promotion_history, publish, rollback


@pytest.fixture
def entry(tmp_path):
    """``registry/m`` with v0001 and v0002 published (latest: v0002), as plain publishes leave it; the model
    files are placeholders with a valid manifest (promotion never loads a model)."""
    model = tmp_path / "model"
    model.mkdir()
    for name in CORE_FILES:
        (model / name).write_text(name)
    files = {name: sha256_file(model / name) for name in CORE_FILES}
    (model / "manifest.json").write_text(json.dumps({"version": ARTIFACT_VERSION, "files": files}))
    publish(model, tmp_path / "registry", "m")
    publish(model, tmp_path / "registry", "m")
    return tmp_path / "registry" / "m"


def latest(entry) -> str:
    return (entry / "latest").read_text().strip()


def test_promote_then_rollback(entry, tmp_path):
    promote(entry, "v0001")
    assert latest(entry) == "v0001" and locate(entry).name == "v0001"
    publish(entry / "v0001", tmp_path / "registry", "m")  # v0003: published, not promoted
    assert latest(entry) == "v0001"
    promote(entry, "v0003")
    assert latest(entry) == "v0003"
    record = rollback(entry)
    assert latest(entry) == "v0001" and (record["version"], record["previous"]) == ("v0001", "v0003")
    history = promotion_history(entry)
    assert [(r["action"], r["version"]) for r in history] == [
        ("promote", "v0001"), ("promote", "v0003"), ("rollback", "v0001")]
    assert promoted_stack(history) == ["v0002", "v0001"]  # the first promotion recorded what latest named
    rollback(entry)  # back to what latest named before the first promotion
    assert latest(entry) == "v0002"
    with pytest.raises(ArtifactError, match=f"{HISTORY}: no earlier promoted version to roll back to "
                                            r"\(v0002 is the earliest promotion in force\)"):
        rollback(entry)


def test_errors_name_the_problem(entry, tmp_path):
    with pytest.raises(ArtifactError, match=r"v0009: no such version; available: \['v0001', 'v0002'\]"):
        promote(entry, "v0009")
    with pytest.raises(ArtifactError, match=r"no earlier promoted version to roll back to \(nothing was promoted\)"):
        rollback(entry)
    with pytest.raises(ArtifactError, match="not a registry entry"):
        promote(tmp_path / "nowhere", "v0001")
    assert not (entry / HISTORY).exists() and latest(entry) == "v0002"


def test_the_commands(entry, capsys):
    assert main(["models", "promote", str(entry), "v0001"]) == 0
    assert capsys.readouterr().out.strip() == f"{entry}: promote v0001 (was v0002)"
    assert main(["models", "promote", str(entry), "v0001"]) == 0
    assert capsys.readouterr().out.strip() == f"{entry}: promote v0001 (it was latest already)"
    assert main(["models", "rollback", str(entry)]) == 0
    assert main(["models", "rollback", str(entry)]) == 0
    assert latest(entry) == "v0002"
    assert main(["models", "list", str(entry)]) == 0
    assert "v0002  promoted" in capsys.readouterr().out
    assert main(["models", "promote", str(entry), "v0042"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "v0042: no such version" in err


def test_publish_adds_a_version_and_moves_latest_only_before_the_first_promotion(entry, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["models", "publish", str(model), str(entry)]) == 0
    assert capsys.readouterr().out.strip() == f"published {model} as {entry / 'v0003'} (latest of {entry})"
    assert latest(entry) == "v0003"
    promote(entry, "v0001")
    assert main(["models", "publish", str(model), str(entry)]) == 0
    assert (entry / "v0004").is_dir() and latest(entry) == "v0001"
    assert capsys.readouterr().out.strip().endswith(f"({entry}'s latest stays v0001: the entry has a promotion "
                                                    f"history; `convfm models promote {entry} v0004` serves this "
                                                    "version)")


def test_telling_a_service_without_its_key_changes_nothing(entry, capsys, monkeypatch):
    """The key is checked before the registry moves: a refusal must leave the registry as it was."""
    monkeypatch.delenv("CONVFM_API_KEY", raising=False)
    assert main(["models", "promote", str(entry), "v0001", "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "environment variable CONVFM_API_KEY is not set" in err and "the registry was not changed" in err
    assert latest(entry) == "v0002" and promotion_history(entry) == []


def test_publish_into_a_promoted_entry_whose_latest_is_gone_says_so_and_promote_repairs_it(entry, tmp_path, capsys):
    promote(entry, "v0001")
    (entry / "latest").unlink()
    assert main(["models", "publish", str(tmp_path / "model"), str(entry)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"({entry} has no latest: the entry has a promotion history; "
                                                    f"`convfm models promote {entry} v0003` serves this version)")
    assert not (entry / "latest").exists()
    assert main(["models", "promote", str(entry), "v0003"]) == 0
    assert capsys.readouterr().out.strip() == f"{entry}: promote v0003 (there was no latest)"
    assert latest(entry) == "v0003" and promoted_stack(promotion_history(entry)) == ["v0002", "v0001", "v0003"]


def test_publishing_into_the_registry_root_is_refused(entry):
    """`models publish runs/r1/best models` made the registry root an entry beside its entries."""
    with pytest.raises(ArtifactError, match=r"registry: holds registry entries \(m\), so it is no entry itself: "
                                            r"publish into one"):
        publish(entry / "v0001", entry.parent.parent, "registry")
    assert not (entry.parent / "latest").exists() and not (entry.parent / "v0001").exists()


def test_promote_repairs_a_latest_naming_no_version(entry, capsys):
    (entry / "latest").write_text("garbage\n")
    assert main(["models", "promote", str(entry), "v0001"]) == 0
    assert capsys.readouterr().out.strip() == f"{entry}: promote v0001 (latest named no version: 'garbage')"
    record = promotion_history(entry)[-1]
    assert (record["previous"], record["latest_was"]) == (None, "garbage") and latest(entry) == "v0001"
    assert promoted_stack(promotion_history(entry)) == ["v0001"]  # nothing to roll back to
    assert main(["models", "list", str(entry)]) == 0
    assert capsys.readouterr().out.strip().endswith("promote v0001 (latest named no version: 'garbage')")


@pytest.mark.parametrize("damage, message", [
    (lambda v: (v / "weights.pt").unlink(), r"weights.pt: listed in the manifest but missing"),
    (lambda v: (v / "manifest.json").write_text('{"version": 1, "files": {'), r"manifest.json"),
], ids=["weights missing", "manifest torn"])
def test_promote_and_rollback_refuse_a_broken_version(entry, capsys, damage, message):
    promote(entry, "v0001")
    promote(entry, "v0002")  # a rollback would go back to v0001
    damage(entry / "v0001")
    assert main(["models", "promote", str(entry), "v0001"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(entry / "v0001") in err and re.search(message, err)
    with pytest.raises(ArtifactError, match=message):
        rollback(entry)
    assert latest(entry) == "v0002" and len(promotion_history(entry)) == 2


@pytest.mark.parametrize("line, message", [
    ('{"action": "promote", "vers', r"line 2: promotion record is not valid JSON"),
    ('{"action": "rollback", "version": "v0002", "previous": "v0001"}', r"line 2: a rollback with no promotion"),
], ids=["torn last line", "rollback first"])
def test_a_history_list_cannot_read_is_refused_not_added_to(entry, capsys, line, message):
    (entry / HISTORY).write_text(f"\n{line}\n")
    before = (entry / HISTORY).read_text()
    for command in (["promote", str(entry), "v0001"], ["rollback", str(entry)], ["list", str(entry)]):
        assert main(["models", *command]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and re.search(f"{re.escape(str(entry / HISTORY))} {message}", err)
    assert (entry / HISTORY).read_text() == before and latest(entry) == "v0002"


def test_promote_after_a_last_line_without_newline(entry):
    promote(entry, "v0001")
    (entry / HISTORY).write_text((entry / HISTORY).read_text().rstrip("\n"))
    promote(entry, "v0002")
    assert [r["version"] for r in promotion_history(entry)] == ["v0001", "v0002"]


def test_list_marks_latest_and_refuses_what_is_no_entry(entry, tmp_path, capsys):
    assert main(["models", "list", str(entry)]) == 0
    assert capsys.readouterr().out.split("\n") == ["v0001", "v0002  latest", ""]  # never promoted
    assert main(["models", "list", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'nope'}: not a registry entry" in err
