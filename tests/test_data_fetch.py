"""Downloads that fail leave nothing new on disk; `ensure_dataset` downloads on first use only with consent."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_fixtures import (
    TEST_IMAGES,
    TEST_LABELS,
    TEST_Y,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    closed_port_url,
    http_mirror,
    tiny_files,
    tiny_spec,
    write_dataset,
)

from redblue import data
from redblue.data import ensure_dataset, fetch_dataset, load_dataset
from redblue.errors import DataError


def tree(root: Path) -> set[str]:
    """Every path under `root`, folders included, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def served(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "served", tiny_files(), name="files")


@pytest.mark.parametrize("where", ["nested new --data-dir", "existing --data-dir", "default cache"])
def test_a_failed_fetch_leaves_nothing_new_on_disk(env, where):
    (env / "existing").mkdir()
    target = {
        "nested new --data-dir": env / "new" / "deeper" / "root",
        "existing --data-dir": env / "existing",
        "default cache": None,
    }[where]
    before = tree(env)
    with pytest.raises(DataError, match="could not download tiny/train-images-idx3-ubyte.gz"):
        fetch_dataset("tiny", target=target, mirrors=[closed_port_url()], timeout=5)
    assert tree(env) == before


def test_a_fetch_interrupted_midway_keeps_only_verified_files(env, monkeypatch):
    from redblue.data import fetch as fetch_module

    calls = []

    def download_then_interrupt(url, destination, *, timeout, limit):
        calls.append(url)
        destination.write_bytes(b"partial")  # a half-written temporary file
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch_module, "_download_to", download_then_interrupt)
    before = tree(env)
    with pytest.raises(KeyboardInterrupt):
        fetch_dataset("tiny", target=env / "dl", mirrors=["http://127.0.0.1:9/"], timeout=5)
    assert len(calls) == 1 and tree(env) == before  # no .part file, no folder


def test_ensure_without_consent_is_one_line_and_touches_nothing(env):
    before = tree(env)
    with pytest.raises(DataError) as exc:
        ensure_dataset("tiny", data_dir=env / "root", allow_download=False)
    message = str(exc.value)
    assert "\n" not in message
    assert f"tiny files not found in {env / 'root' / 'tiny'} (--data-dir, does not exist)" in message
    assert f"run `redblue data fetch tiny --data-dir {env / 'root'}`" in message
    assert message.endswith("or let this command download them with --download (or REDBLUE_DOWNLOAD=1)")
    assert tree(env) == before


def test_ensure_with_consent_downloads_only_the_missing_files_into_the_data_dir(env):
    folder = write_dataset(env / "root", {TRAIN_IMAGES: tiny_files()[TRAIN_IMAGES]})
    with http_mirror(served(env)) as mirror:
        found = ensure_dataset("tiny", data_dir=env / "root", allow_download=True, mirrors=[mirror.url], timeout=5)
        assert sorted(mirror.requests) == sorted(f"/{n}.gz" for n in (TRAIN_LABELS, TEST_IMAGES, TEST_LABELS))
        again = ensure_dataset("tiny", data_dir=env / "root", allow_download=True, mirrors=[mirror.url], timeout=5)
        assert len(mirror.requests) == 3  # all present now: nothing asked for
    assert [f.path for f in found] == [folder / f"{name}.gz" for name in tiny_files()]
    assert [f.origin for f in found] == ["--data-dir"] * 4 and found == again
    assert load_dataset("tiny", "test", data_dir=env / "root").y.tolist() == TEST_Y


def test_ensure_downloads_into_the_cache_without_a_data_dir_and_one_split_only(env, monkeypatch):
    with http_mirror(served(env)) as mirror:
        monkeypatch.setitem(data.DATASETS, "tiny", tiny_spec(mirrors=(closed_port_url(), mirror.url)))
        found = ensure_dataset("tiny", allow_download=True, splits=("test",), timeout=5)
        assert sorted(mirror.requests) == [f"/{TEST_IMAGES}.gz", f"/{TEST_LABELS}.gz"]
    cache = env / "xdg-cache" / "redblue" / "tiny"
    assert [f.path for f in found] == [cache / f"{TEST_IMAGES}.gz", cache / f"{TEST_LABELS}.gz"]
    assert {f.origin for f in found} == {"cache"}


def test_ensure_does_not_look_past_an_explicit_data_dir(env, monkeypatch):
    write_dataset(env / "xdg-cache" / "redblue", tiny_files())  # a good copy in the cache
    with pytest.raises(DataError, match=r"not found in .*given/tiny \(--data-dir"):
        ensure_dataset("tiny", data_dir=env / "given", allow_download=False)
    assert ensure_dataset("tiny", allow_download=False)[0].origin == "cache"


def test_a_corrupt_download_is_refused_and_leaves_nothing(env):
    files = tiny_files()
    bad = dict(files)
    bad[TEST_LABELS] = files[TEST_LABELS][:-1] + bytes([files[TEST_LABELS][-1] ^ 1])  # one label off
    with http_mirror(write_dataset(env / "served", bad, name="files")) as mirror:
        before = tree(env)
        with pytest.raises(DataError, match="is corrupt: it fails its checksum") as exc:
            ensure_dataset("tiny", data_dir=env / "new", allow_download=True, splits=("test",),
                           mirrors=[mirror.url], timeout=5)
    assert "\n" not in str(exc.value)
    # the verified images file stays (a rerun resumes from it); nothing unverified, no partial file
    assert tree(env) - before == {"new", "new/tiny", f"new/tiny/{TEST_IMAGES}.gz"}
