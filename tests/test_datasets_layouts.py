"""Corel-1K, folder:/qg:/csv: layouts, the `cbir datasets` command, and bad data end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cbir_kit.cli import main
from cbir_kit.datasets import DatasetError, load
from cbir_kit.errors import CbirWarning


def _img(path, color=(200, 30, 30), size=(24, 24), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_corel1k_registered_name(shared_data):
    ds = load("corel1k", root=shared_data)
    assert ds.name == "corel1k" and ds.n_queries == 100 and ds.n_gallery == 900
    assert len(set(ds.gallery_labels) | set(ds.query_labels)) == 10
    assert len(ds.class_names) == 10 and not ds.leave_one_out
    assert (ds.n_relevant() == 90).all()


def test_corel1k_folder_is_detected_as_query_gallery(shared_data):
    ds = load(f"folder:{shared_data / 'corel1k'}")
    assert ds.n_queries + ds.n_gallery == 1000 and not ds.leave_one_out
    assert load(f"qg:{shared_data / 'corel1k'}").n_gallery == 900


def test_corel1k_missing_says_where(tmp_path):
    with pytest.raises(DatasetError) as err:
        load("corel1k", root=tmp_path)
    assert str((tmp_path / "corel1k").resolve()) in str(err.value) and "labels.csv" in str(err.value)


def test_qg_with_class_folders(tmp_path):
    for split, n in (("query", 1), ("gallery", 3)):
        for c, color in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
            for i in range(n):
                _img(tmp_path / split / c / f"{i}.png", color)
    for spec in (f"qg:{tmp_path}", f"folder:{tmp_path}"):
        ds = load(spec)
        assert ds.n_queries == 2 and ds.n_gallery == 6 and not ds.leave_one_out
        assert ds.query_labels.tolist() == ["cats", "dogs"] and ds.class_names == ["cats", "dogs"]
        assert (ds.n_relevant() == 3).all()


def test_qg_with_path_label_csv(tmp_path):
    _img(tmp_path / "query" / "q1.jpg")
    _img(tmp_path / "gallery" / "g1.jpg")
    _img(tmp_path / "gallery" / "g2.jpg")
    (tmp_path / "labels.csv").write_text("path,label\nquery/q1.jpg,a\ngallery/g1.jpg,a\ngallery/g2.jpg,b\n")
    ds = load(f"qg:{tmp_path}")
    assert ds.n_queries == 1 and ds.gallery_labels.tolist() == ["a", "b"]
    assert ds.n_relevant().tolist() == [1]
    (tmp_path / "labels.csv").write_text("path,label\nelsewhere/q1.jpg,a\n")
    with pytest.raises(DatasetError, match="line 2"):
        load(f"qg:{tmp_path}")


def test_qg_flat_without_labels_is_an_error(tmp_path):
    _img(tmp_path / "query" / "q1.jpg")
    _img(tmp_path / "gallery" / "g1.jpg")
    with pytest.raises(DatasetError, match="labels.csv"):
        load(f"qg:{tmp_path}")
    with pytest.raises(DatasetError, match="query/ and a gallery/"):
        load(f"qg:{tmp_path / 'query'}")


def test_empty_class_folder_is_an_error_that_names_it(tmp_path):
    _img(tmp_path / "cats" / "a.png")
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"dogs contains no images"):
        load(f"folder:{tmp_path}")
    _img(tmp_path / "qg" / "query" / "cats" / "a.png")
    (tmp_path / "qg" / "gallery" / "cats").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"gallery/cats contains no images"):
        load(f"qg:{tmp_path / 'qg'}")


def test_unknown_spec_lists_the_choices():
    with pytest.raises(DatasetError, match="qg:PATH"):
        load("imagenet")


# --- the `cbir datasets` command ---------------------------------------------------------------

def test_cli_list_and_info(shared_data, capsys):
    assert main(["datasets", "list", "--root", str(shared_data)]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "corel1k", "animals10", "cifar100", "roxford5k", "rparis6k"):
        assert name in out
    assert main(["datasets", "info", "corel1k", "--root", str(shared_data)]) == 0
    out = capsys.readouterr().out
    assert "100 queries, 900 gallery images, 10 classes" in out and "beaches 90" in out
    assert main(["datasets", "info", "roxford5k", "--root", str(shared_data)]) == 0
    out = capsys.readouterr().out
    assert "ground truth only" in out and "70 queries, 4993 database images" in out
    assert "easy 3029, hard 2497, junk 1356" in out


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["datasets", "info", "cifar100", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cbir datasets fetch cifar100" in err and err.count("\n") == 1
    assert main(["datasets", "fetch", "corel1k", "--root", str(tmp_path)]) == 2
    assert "Corel-1K is not at" in capsys.readouterr().err
    assert not (tmp_path / "cifar100").exists()


def test_cli_fetch_and_info_of_a_manifest(capsys):
    from cbir_kit.datasets import default_root

    assert main(["datasets", "fetch", "demo", "--no-progress"]) == 0  # the session's data root
    assert "demo: ready in" in capsys.readouterr().out
    assert main(["datasets", "info", f"csv:{default_root() / 'demo' / 'labels.csv'}"]) == 0
    assert "54 queries, 72 gallery images, 18 classes" in capsys.readouterr().out


# --- bad data does not stop a run ----------------------------------------------------------------

def test_bad_files_are_reported_and_skipped_end_to_end(tmp_path, capsys):
    data = tmp_path / "bad"
    rng = np.random.default_rng(0)
    for c in ("red", "blue"):
        (data / c).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            arr[..., 0 if c == "red" else 2] = 255
            Image.fromarray(arr).save(data / c / f"good{i}.jpg")
    whole = data / "red" / "good0.jpg"
    (data / "red" / "truncated.jpg").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    (data / "red" / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(data / "red" / "cmyk.jpg")
    Image.new("RGB", (1, 1), (0, 0, 255)).save(data / "blue" / "tiny.png")
    Image.new("RGBA", (30, 30), (0, 0, 255, 128)).save(data / "blue" / "alpha.png")
    out_json = tmp_path / "result.json"
    rc = main(["evaluate", "--dataset", f"folder:{data}", "--no-progress", "--k", "3", "--json", str(out_json)])
    assert rc == 0
    printed = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    skipped = {s["image"]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == {str(data / "red" / "truncated.jpg"), str(data / "red" / "notes.jpg")}
    assert "not an image" in skipped[str(data / "red" / "notes.jpg")]
    assert skipped[str(data / "red" / "truncated.jpg")]
    assert "skipped 2 image(s)" in printed and "notes.jpg" in printed and "truncated.jpg" in printed
    assert result["n_gallery"] == 7 and result["n_queries"] == 7  # the CMYK, 1x1 and RGBA files embedded


def test_symlink_loops_in_a_folder_dataset_are_dropped_with_a_warning_naming_each(tmp_path):
    data, extra = tmp_path / "data", tmp_path / "extra"
    for path in (data / "red" / "0.png", data / "red" / "1.png", data / "blue" / "0.png", extra / "x.png"):
        _img(path)
    loops = [data / "red" / "again", data / "mirror", data / "blue" / "a.jpg", data / "blue" / "b.jpg"]
    loops[0].symlink_to(data)  # a sub-folder link back to the top
    loops[1].symlink_to(data)  # a class folder that is the dataset itself
    loops[2].symlink_to(loops[3])  # two image links pointing at each other
    loops[3].symlink_to(loops[2])
    (data / "blue" / "more").symlink_to(extra)  # an ordinary link to a folder: followed
    with pytest.warns(CbirWarning) as caught:
        ds = load(f"folder:{data}")
    messages = [str(w.message) for w in caught]
    for link in loops:
        assert any(m.startswith(f"skipping the symbolic link {link}: it loops back to") for m in messages), link
    assert ds.class_names == ["blue", "red"]
    assert ds.gallery == [str(data / "blue" / "0.png"), str(data / "blue" / "more" / "x.png"),
                          str(data / "red" / "0.png"), str(data / "red" / "1.png")]
