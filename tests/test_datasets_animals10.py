"""Animals-10: hand-placed folders and zips, the seeded split, and the Kaggle credential check."""
from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pytest
from PIL import Image

from cbir_kit.datasets import DatasetError, load
from cbir_kit.datasets.animals10 import (ITALIAN_TO_ENGLISH, fetch_animals10, kaggle_credentials,
                                         load_animals10)
from cbir_kit.datasets.download import DownloadError

PER_CLASS = 7
N_QUERY, N_GALLERY = 20, 30  # 2 queries and 3 gallery images per class


def make_raw_img(parent, reverse: bool = False):
    """raw-img/<italian>/ with PER_CLASS tiny JPEGs; ``reverse`` creates them in the opposite order."""
    raw = parent / "raw-img"
    classes = sorted(ITALIAN_TO_ENGLISH, reverse=reverse)
    for italian in sorted(ITALIAN_TO_ENGLISH):
        (raw / italian).mkdir(parents=True)
    for italian in classes:
        c_idx = sorted(ITALIAN_TO_ENGLISH).index(italian)
        names = [f"OIP-{c_idx}{i}.jpeg" if i % 2 else f"{i:02d}_{italian}.jpg" for i in range(PER_CLASS)]
        for i, name in enumerate(reversed(names) if reverse else names):
            Image.new("RGB", (8, 8), (c_idx * 20, i * 30, 100)).save(raw / italian / name)
    return raw


def test_split_is_stratified_disjoint_and_english(tmp_path):
    make_raw_img(tmp_path / "animals10")
    ds = load_animals10(root=tmp_path, n_query=N_QUERY, n_gallery=N_GALLERY, progress=False)
    assert ds.n_queries == N_QUERY and ds.n_gallery == N_GALLERY
    english = sorted(ITALIAN_TO_ENGLISH.values())
    assert ds.class_names == english
    q_labels, q_counts = np.unique(ds.query_labels.astype(str), return_counts=True)
    g_labels, g_counts = np.unique(ds.gallery_labels.astype(str), return_counts=True)
    assert q_labels.tolist() == english and (q_counts == 2).all()
    assert g_labels.tolist() == english and (g_counts == 3).all()
    assert not set(ds.query) & set(ds.gallery)
    for path, label in zip(ds.query + ds.gallery, ds.query_labels.tolist() + ds.gallery_labels.tolist()):
        italian = path.replace("\\", "/").split("/")[-2]
        assert ITALIAN_TO_ENGLISH[italian] == label


def test_split_follows_the_documented_procedure(tmp_path):
    """Transcription of the docstring: sorted files per class, one default_rng(seed) permutation each."""
    raw = make_raw_img(tmp_path / "animals10")
    ds = load_animals10(root=tmp_path, n_query=N_QUERY, n_gallery=N_GALLERY, seed=5, progress=False)
    rng = np.random.default_rng(5)
    want_q, want_g = set(), set()
    for italian in sorted(ITALIAN_TO_ENGLISH):
        files = sorted(p.name for p in (raw / italian).iterdir())
        perm = rng.permutation(len(files))
        want_q |= {f"{italian}/{files[i]}" for i in perm[:2]}
        want_g |= {f"{italian}/{files[i]}" for i in perm[2:5]}
    rel = lambda paths: {"/".join(p.replace("\\", "/").split("/")[-2:]) for p in paths}  # noqa: E731
    assert rel(ds.query) == want_q and rel(ds.gallery) == want_g


def test_same_seed_same_manifest_hash_on_two_machines(tmp_path):
    make_raw_img(tmp_path / "a" / "animals10")
    make_raw_img(tmp_path / "b" / "animals10", reverse=True)  # other file-system order
    a = load_animals10(root=tmp_path / "a", n_query=N_QUERY, n_gallery=N_GALLERY, seed=3, progress=False)
    b = load_animals10(root=tmp_path / "b", n_query=N_QUERY, n_gallery=N_GALLERY, seed=3, progress=False)
    c = load_animals10(root=tmp_path / "b", n_query=N_QUERY, n_gallery=N_GALLERY, seed=4, progress=False)
    assert a.info["manifest_sha256"] == b.info["manifest_sha256"]
    assert hashlib.sha256(open(a.info["manifest"], "rb").read()).hexdigest() == a.info["manifest_sha256"]
    assert c.info["manifest_sha256"] != a.info["manifest_sha256"]


def test_manifest_never_changes_once_written(tmp_path):
    raw = make_raw_img(tmp_path / "animals10")
    first = load_animals10(root=tmp_path, n_query=N_QUERY, n_gallery=N_GALLERY, progress=False)
    Image.new("RGB", (8, 8)).save(raw / "cane" / "000_new.jpg")  # a new file sorts first
    again = load("animals10", root=tmp_path, n_query=N_QUERY, n_gallery=N_GALLERY, progress=False)
    assert again.info["manifest_sha256"] == first.info["manifest_sha256"]
    assert again.query == first.query


def test_hand_placed_folder_via_path(tmp_path):
    raw = make_raw_img(tmp_path / "somewhere")
    ds = load_animals10(path=raw, n_query=N_QUERY, n_gallery=N_GALLERY)
    assert ds.n_queries == N_QUERY and (tmp_path / "somewhere").joinpath(ds.info["manifest"]).is_file()
    with pytest.raises(DatasetError, match="raw-img"):
        load_animals10(path=tmp_path / "empty_dir_that_is_missing")


def test_hand_placed_zip_is_extracted(tmp_path):
    src = make_raw_img(tmp_path / "src")
    home = tmp_path / "root" / "animals10"
    home.mkdir(parents=True)
    with zipfile.ZipFile(home / "animals10.zip", "w") as zf:
        for p in sorted(src.rglob("*.jp*g")):
            zf.write(p, p.relative_to(src.parent).as_posix())
        zf.writestr("translate.py", "# shipped with the Kaggle archive\n")
    raw = fetch_animals10(tmp_path / "root", progress=False)
    assert raw == home / "raw-img" and len(list((raw / "gatto").iterdir())) == PER_CLASS
    assert not (home / "animals10.zip").exists()


def test_damaged_zip_is_deleted_with_a_clear_error(tmp_path):
    home = tmp_path / "animals10"
    home.mkdir()
    (home / "animals10.zip").write_bytes(b"PK\x03\x04 this is not a whole zip")
    with pytest.raises(DatasetError, match="animals10.zip"):
        fetch_animals10(tmp_path, progress=False)
    assert not (home / "animals10.zip").exists()


def test_bad_folders_are_named(tmp_path):
    raw = make_raw_img(tmp_path / "animals10")
    for f in (raw / "ragno").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="ragno"):
        load_animals10(root=tmp_path, n_query=N_QUERY, n_gallery=N_GALLERY)
    (raw / "ragno").rmdir()
    with pytest.raises(DatasetError, match="ragno.*missing"):
        load_animals10(root=tmp_path, n_query=N_QUERY, n_gallery=N_GALLERY)
    make_raw_img(tmp_path / "x")
    (tmp_path / "x" / "raw-img" / "dog").mkdir()
    with pytest.raises(DatasetError, match="dog"):
        load_animals10(path=tmp_path / "x", n_query=N_QUERY, n_gallery=N_GALLERY)
    with pytest.raises(DatasetError, match="multiples of 10"):
        load_animals10(path=tmp_path / "x", n_query=15, n_gallery=N_GALLERY)


def test_split_too_large_for_a_class(tmp_path):
    make_raw_img(tmp_path / "animals10")
    with pytest.raises(DatasetError, match="per class"):
        load_animals10(root=tmp_path, n_query=10, n_gallery=70)


@pytest.fixture
def no_kaggle_credentials(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    return home


def test_missing_kaggle_credentials_give_exact_steps(tmp_path, no_kaggle_credentials):
    assert kaggle_credentials() is None
    with pytest.raises(DownloadError) as err:
        load("animals10", root=tmp_path / "data")
    msg = str(err.value)
    assert "alessiocorrado99/animals10" in msg
    assert str(no_kaggle_credentials / ".kaggle" / "kaggle.json") in msg and "chmod 600" in msg
    assert "KAGGLE_USERNAME" in msg and "KAGGLE_KEY" in msg
    assert str((tmp_path / "data" / "animals10" / "animals10.zip").resolve()) in msg
    assert "raw-img" in msg
    assert not (tmp_path / "data" / "animals10").exists()  # nothing left behind


def test_kaggle_credentials_are_found_where_kaggle_reads_them(no_kaggle_credentials, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "student")
    monkeypatch.setenv("KAGGLE_KEY", "abc")
    assert "KAGGLE_USERNAME" in kaggle_credentials()
    monkeypatch.delenv("KAGGLE_KEY")
    assert kaggle_credentials() is None  # a user name alone is not enough
    cfg = no_kaggle_credentials / ".kaggle" / "kaggle.json"
    cfg.parent.mkdir()
    cfg.write_text('{"username": "student", "key": "abc"}')
    assert kaggle_credentials() == str(cfg)
