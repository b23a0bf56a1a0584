"""Revisited Oxford / Paris: the real ground truth, cropped queries, and the fetcher."""
from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from cbir_kit.datasets import DatasetError, load
from cbir_kit.datasets.revisitop import CroppedImage, fetch_revisitop, gnd_for_setting, load_ground_truth
from cbir_kit.datasets.images import open_image

SIZES = {"roxford5k": 4993, "rparis6k": 6322}


@pytest.mark.parametrize("name", ["roxford5k", "rparis6k"])
def test_real_ground_truth_loads(shared_data, name):
    gt = load_ground_truth(name, root=shared_data)
    with open(shared_data / name / f"gnd_{name}.pkl", "rb") as f:
        raw = pickle.load(f)
    assert len(gt.qimlist) == 70 and len(gt.imlist) == SIZES[name]
    assert gt.counts() == {k: sum(len(g[k]) for g in raw["gnd"]) for k in ("easy", "hard", "junk")}
    # the three settings, query by query, against the pickle
    for setting in ("easy", "medium", "hard"):
        lists = gnd_for_setting(gt.gnd, setting)
        for entry, g in zip(lists, raw["gnd"]):
            ok = {"easy": g["easy"], "medium": g["easy"] + g["hard"], "hard": g["hard"]}[setting]
            junk = {"easy": g["junk"] + g["hard"], "medium": g["junk"], "hard": g["junk"] + g["easy"]}[setting]
            assert sorted(entry["ok"].tolist()) == sorted(ok) and sorted(entry["junk"].tolist()) == sorted(junk)
            assert list(entry["bbx"]) == list(g["bbx"])


def test_real_counts_are_the_published_ones(shared_data):
    assert load_ground_truth("roxford5k", shared_data).counts() == {"easy": 3029, "hard": 2497, "junk": 1356}
    assert load_ground_truth("rparis6k", shared_data).counts() == {"easy": 6874, "hard": 10350, "junk": 7153}


@pytest.mark.parametrize("name", ["roxford5k", "rparis6k"])
def test_loading_without_images_is_a_clear_error(shared_data, name):
    with pytest.raises(DatasetError) as err:
        load(name, root=shared_data)
    msg = str(err.value)
    assert "missing" in msg and str((shared_data / name / "jpg").resolve()) in msg
    assert f"cbir datasets fetch {name}" in msg and "load_ground_truth" in msg


def test_missing_ground_truth_names_url_and_place(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_ground_truth("roxford5k", root=tmp_path)
    msg = str(err.value)
    assert "gnd_roxford5k.pkl" in msg and "cmp.felk.cvut.cz/revisitop" in msg
    with pytest.raises(DatasetError, match="unknown revisitop"):
        load_ground_truth("roxford", root=tmp_path)


def _tiny_revisitop(home, names=("a_000001", "a_000002", "b_000001"), query="a_000003"):
    """A revisitop-format folder: one query (box 2..10 x 4..12), three database images."""
    (home / "jpg").mkdir(parents=True)
    for i, n in enumerate(list(names) + [query]):
        Image.new("RGB", (20, 16), (i * 50, 0, 0)).save(home / "jpg" / f"{n}.jpg")
    gnd = [{"bbx": [2.4, 4.0, 10.0, 12.2], "easy": [0], "hard": [1], "junk": [2]}]
    with open(home / f"gnd_{home.name}.pkl", "wb") as f:
        pickle.dump({"imlist": list(names), "qimlist": [query], "gnd": gnd}, f)


def test_dataset_with_images_crops_queries(tmp_path):
    _tiny_revisitop(tmp_path / "roxford5k")
    ds = load("roxford5k", root=tmp_path)
    assert ds.n_queries == 1 and ds.n_gallery == 3
    q = ds.query[0]
    assert isinstance(q, CroppedImage)
    assert open_image(q).size == (8, 8)  # x 2..10, y 4..12
    assert q.cache_key != ds.gallery[0] and "crop" in q.cache_key
    g = ds.gnd[0]
    assert g["ok"].tolist() == [0, 1] and g["junk"].tolist() == [2] and g["easy"].tolist() == [0]
    assert ds.n_relevant().tolist() == [2]  # Medium: easy + hard
    assert ds.query_labels.tolist() == ["a"] and ds.gallery_labels.tolist() == ["a", "a", "b"]
    full = load("roxford5k", root=tmp_path, crop_queries=False)
    assert open_image(full.query[0]).size == (20, 16)


def _tgz(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 16), color).save(buf, format="JPEG")
    return buf.getvalue()


def test_fetch_flattens_paris_archives(tmp_path, http_server):
    """Two archives in the Paris layout (paris/<landmark>/<image>.jpg) end up flat in jpg/."""
    srv = http_server
    gnd = {"imlist": ["paris_defense_000001", "paris_louvre_000001"], "qimlist": ["paris_louvre_000002"],
           "gnd": [{"bbx": [0, 0, 10, 10], "easy": [1], "hard": [], "junk": [0]}]}
    srv.files["/gnd.pkl"] = pickle.dumps(gnd)
    srv.files["/paris_1.tgz"] = _tgz([("paris/defense/paris_defense_000001.jpg", _jpeg((255, 0, 0)))])
    srv.files["/paris_2.tgz"] = _tgz([("paris/louvre/paris_louvre_000001.jpg", _jpeg((0, 255, 0))),
                                     ("paris/louvre/paris_louvre_000002.jpg", _jpeg((0, 0, 255)))])
    srv.truncate["/paris_2.tgz"] = 1  # cut off once, resumed
    urls = [srv.url("/paris_1.tgz"), srv.url("/paris_2.tgz")]
    home = fetch_revisitop("rparis6k", tmp_path, progress=False, gnd_url=srv.url("/gnd.pkl"), image_urls=urls)
    assert sorted(p.name for p in (home / "jpg").iterdir()) == [
        "paris_defense_000001.jpg", "paris_louvre_000001.jpg", "paris_louvre_000002.jpg"]
    assert not (home / "paris_1.tgz").exists() and not (home / "paris_2.tgz").exists()
    assert not (home / ".unpack").exists()
    ds = load("rparis6k", root=tmp_path)
    assert ds.n_gallery == 2 and ds.gnd[0]["ok"].tolist() == [1]
    n = len(srv.requests)
    fetch_revisitop("rparis6k", tmp_path, progress=False, gnd_url=srv.url("/gnd.pkl"), image_urls=urls)
    assert len(srv.requests) == n  # complete: nothing fetched again


def test_gnd_for_setting_rejects_unknown_setting():
    with pytest.raises(Exception, match="setting"):
        gnd_for_setting([{"easy": [1], "hard": [], "junk": []}], "medium-rare")
    np.testing.assert_array_equal(gnd_for_setting([{"easy": [1], "hard": [2], "junk": [3]}], "hard")[0]["junk"], [3, 1])
