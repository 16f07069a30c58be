"""train/digests.py on hand-made folders: which files are covered, what is recorded, what check says.

The sha256 values are the standard test vectors: sha256(b"") = e3b0c442…b855, sha256(b"abc") =
ba7816bf…15ad (FIPS 180-2), so every recorded number is known without running the code under test.
"""

import errno
import json
import os

import pytest

from orthosae.train import digests

EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_write_atomic_writes_through_a_hidden_temporary_beside_the_file(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_text("new")

    digests.write_atomic(target, write)
    assert seen == [tmp_path / f".x.json.tmp-{os.getpid()}"]  # hidden: covered_files skips it
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_a_failed_atomic_write_names_the_file_keeps_the_old_one_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")

    def write(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with pytest.raises(OSError) as e:
        digests.write_atomic(target, write)
    assert (e.value.errno, e.value.strerror, e.value.filename) == (errno.ENOSPC, "No space left on device", str(target))
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def folder_of(tmp_path):
    """a (empty), b ("abc"), plus what record must skip: its own file, summary.json, a hidden
    temporary and a subfolder."""
    (tmp_path / "b").write_bytes(b"abc")
    (tmp_path / "a").write_bytes(b"")
    (tmp_path / digests.DIGESTS).write_text("{}")
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / ".b.tmp-1").write_text("half")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c").write_text("c")
    return tmp_path


def test_record_covers_plain_visible_files_and_writes_the_digest_file(tmp_path):
    folder = folder_of(tmp_path)
    assert digests.covered_files(folder) == ["a", "b"]
    files = digests.record(folder)
    want = {"a": {"sha256": EMPTY, "bytes": 0}, "b": {"sha256": ABC, "bytes": 3}}
    assert files == want
    text = (folder / "digests.json").read_text()
    assert text == json.dumps({"algorithm": "sha256", "files": want}, indent=2) + "\n"
    assert digests.read(folder) == want


def test_read_says_none_without_a_digest_file_and_names_an_unreadable_one(tmp_path):
    assert digests.read(tmp_path) is None
    path = tmp_path / "digests.json"
    for text, kind in [
        ("[1,", "JSONDecodeError"),
        ("{}", "KeyError"),  # no "files"
        ("[1]", "TypeError"),  # a list has no "files"
        ('{"files": {"a": 1}}', "ValueError"),  # an entry that is not a table
        ('{"files": {"a": {"sha256": "x"}}}', "ValueError"),  # lacks bytes
        ('{"files": {"a": {"bytes": 1}}}', "ValueError"),  # lacks sha256
    ]:
        path.write_text(text)
        with pytest.raises(ValueError) as e:
            digests.read(tmp_path)
        assert str(e.value) == f"{path}: unreadable ({kind})", text
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=r": unreadable \(UnicodeDecodeError\)$"):
        digests.read(tmp_path)
    path.write_text('{"files": {"a": {"sha256": "x", "bytes": 1}}}')
    assert digests.read(tmp_path) == {"a": {"sha256": "x", "bytes": 1}}


def test_check_names_missing_resized_and_damaged_files_in_name_order(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")  # intact
    (tmp_path / "c").write_bytes(b"ab")  # one byte short
    (tmp_path / "d").write_bytes(b"abd")  # same size, other bytes
    (tmp_path / "e").mkdir()  # a folder where a file was: missing
    files = {
        "d": {"sha256": ABC, "bytes": 3},
        "c": {"sha256": ABC, "bytes": 3},
        "b": {"sha256": ABC, "bytes": 3},
        "a": {"sha256": ABC, "bytes": 3},
        "e": {"sha256": EMPTY, "bytes": 0},
    }
    p = str(tmp_path)
    assert digests.check(tmp_path, files) == [
        (f"{p}/b", "missing"),
        (f"{p}/c", "2 bytes, 3 recorded (truncated or replaced)"),
        (f"{p}/d", "sha256 differs from the recorded one (damaged or replaced)"),
        (f"{p}/e", "missing"),
    ]
    # sizes only: the same-size damage goes unseen
    assert digests.check(tmp_path, files, full=False) == [
        (f"{p}/b", "missing"),
        (f"{p}/c", "2 bytes, 3 recorded (truncated or replaced)"),
        (f"{p}/e", "missing"),
    ]
    assert digests.check(tmp_path, {"a": {"sha256": ABC, "bytes": 3}}) == []
