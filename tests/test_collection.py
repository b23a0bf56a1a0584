"""Collections as their users meet them: build a folder of photos once, search it by image and by text, grow it.

Real components throughout: images decoded from disk, EfficientNet-Lite0 with its real weights,
open_clip's ViT-B-32 (random weights, offline) for text, real faiss indexes written and read back.
"""
from __future__ import annotations

import csv
import datetime
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir_kit import Collection
from cbir_kit.cli import main
from cbir_kit.errors import CbirError, CollectionError
from cbir_kit.index import ExactIndex
from cbir_kit.index.persist import IndexSpec

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

LINE = re.compile(r"^(\d+)\. (.+) - Similarity Score: (-?\d\.\d\d)$")


def _cbir(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _blocks(out: str) -> list[tuple[str, str, list[tuple[int, str, float]]]]:
    """(query, header, [(rank, path, score)]) per query block of `cbir search`'s output."""
    blocks = []
    for chunk in out.split("\nQuery: ")[1:]:
        lines = chunk.strip().splitlines()
        rows = [LINE.match(line) for line in lines[2:] if LINE.match(line)]
        blocks.append((lines[0], lines[1], [(int(m[1]), m[2], float(m[3])) for m in rows]))
    return blocks


@pytest.fixture(scope="module")
def corel_photos(corel_csv, tmp_path_factory) -> tuple[Path, dict, list[tuple[Path, str]]]:
    """A folder of real Corel photos, 5 classes x 30 (class sub-folders), and held-out photos of those classes."""
    rows = list(csv.DictReader(open(corel_csv)))
    classes = sorted({r["label"] for r in rows})[:5]
    folder = tmp_path_factory.mktemp("my_photos")
    held_out = []
    for label in classes:
        gallery = [r for r in rows if r["label"] == label and r["split"] == "gallery"][:30]
        (folder / label).mkdir()
        for r in gallery:
            shutil.copy(corel_csv.parent / r["path"], folder / label / Path(r["path"]).name)
        held_out += [(corel_csv.parent / r["path"], label) for r in rows if r["label"] == label and r["split"] == "query"][:2]
    labels = {p: p.parent.name for p in folder.rglob("*.jpg")}
    return folder, labels, held_out


@pytest.fixture(scope="module")
def corel_collection(corel_photos, tmp_path_factory) -> Path:
    folder, _, _ = corel_photos
    out = tmp_path_factory.mktemp("collections") / "photos"
    assert main(["index", "build", "--dataset", f"folder:{folder}", "--out", str(out), "--no-progress"]) == 0
    return out


def test_search_a_folder_of_photos_by_its_own_image_and_by_a_new_photo(corel_photos, corel_collection, capsys, tmp_path):
    folder, labels, held_out = corel_photos
    own = sorted(folder.rglob("*.jpg"))[3]
    new, new_label = held_out[2]
    code, out, err = _cbir(capsys, "search", corel_collection, own, new, "--json", tmp_path / "r.json",
                           "--grid", tmp_path / "grid.png")
    assert code == 0, err
    blocks = _blocks(out)
    assert [b[1] for b in blocks] == ["Top 10 most similar images:"] * 2
    for (query, _, rows) in blocks:
        assert [r[0] for r in rows] == list(range(1, 11))
        scores = [r[2] for r in rows]
        assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    own_rows, new_rows = blocks[0][2], blocks[1][2]
    assert Path(own_rows[0][1]).resolve() == own.resolve() and own_rows[0][2] == 1.00   # itself, cosine 1
    same_class = sum(labels[Path(p).resolve()] == new_label for _, p, _ in new_rows)
    assert same_class >= 6, f"only {same_class} of the new photo's top 10 are {new_label}"
    # over every held-out photo (2 per class), most of the top 10 are of the photo's class
    results = Collection.open(corel_collection).search(images=[p for p, _ in held_out], k=10)
    shares = [np.mean([h.label == label for h in r.results]) for r, (_, label) in zip(results, held_out)]
    assert np.mean(shares) >= 0.8, shares
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["model"] == "efficientnet_lite0" and set(saved["timings"]) == {"embed_ms", "search_ms"}
    first = saved["queries"][1]["results"][0]
    assert set(first) == {"rank", "path", "score", "label"} and first["label"] in {p.parent.name for p in labels}
    # the JSON and the printed lines agree (scores printed to 2 decimals)
    assert [round(r["score"], 2) for r in saved["queries"][1]["results"]] == [r[2] for r in new_rows]
    assert Image.open(tmp_path / "grid.png").size[0] > 800


def test_scores_are_the_cosine_similarities_of_exact_search(corel_collection, corel_photos):
    c = Collection.open(corel_collection)
    _, _, held_out = corel_photos
    result = c.search(images=[p for p, _ in held_out], k=10)
    queries, _ = c.embed_images([p for p, _ in held_out])
    scores, ids = ExactIndex().fit(np.asarray(c.vectors)).search(queries, 10)
    for r, s_row, i_row in zip(result, scores, ids):
        assert [h.id for h in r.results] == i_row.tolist()
        np.testing.assert_allclose([h.score for h in r.results], s_row, rtol=1e-5)
        assert [c.paths[i] for i in i_row] == [h.path for h in r.results]


def test_add_five_new_images_then_each_finds_itself_first(corel_collection, corel_photos, tmp_path, capsys):
    _, _, held_out = corel_photos
    work = tmp_path / "grown"
    shutil.copytree(corel_collection, work)
    new = tmp_path / "new"
    new.mkdir()
    for src, _ in held_out[:5]:
        shutil.copy(src, new / f"new_{src.name}")
    before = len(Collection.open(work))
    code, out, err = _cbir(capsys, "index", "add", work, new, "--label", "holiday")
    assert code == 0, err
    assert f"added 5 image(s) to {work}: now {before + 5} images" in out
    code, out, _ = _cbir(capsys, "search", work, new / f"new_{held_out[2][0].name}", "--k", "3")
    rows = _blocks(out)[0][2]
    assert Path(rows[0][1]).name == f"new_{held_out[2][0].name}" and rows[0][2] == 1.00
    c = Collection.open(work)
    assert len(c) == before + 5 == len(c.vectors) == c.index.ntotal == len(c.paths)
    assert c.label(len(c) - 1) == "holiday" and c.manifest["history"][-1] == {**c.manifest["history"][-1], "action": "add", "n": 5}
    # adding the same images again adds nothing: they are already in the collection
    code, out, _ = _cbir(capsys, "index", "add", work, new)
    assert "added 0 image(s)" in out and out.count("already in the collection") == 5


def test_building_again_extracts_nothing_the_cache_has(corel_photos, corel_collection, tmp_path, capsys):
    folder, _, _ = corel_photos
    code, out, _ = _cbir(capsys, "index", "build", "--dataset", f"folder:{folder}", "--out", tmp_path / "again",
                         "--index", "HNSW16", "--no-progress")
    assert code == 0 and "; features from the cache, nothing extracted" in out
    again = Collection.open(tmp_path / "again")
    np.testing.assert_array_equal(np.asarray(again.vectors), np.asarray(Collection.open(corel_collection).vectors))


def test_info_describes_the_collection(corel_collection, capsys):
    code, out, _ = _cbir(capsys, "index", "info", corel_collection)
    assert code == 0
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.strip().splitlines())
    assert fields["model"] == "efficientnet_lite0" and fields["images"] == "150" and fields["index"] == "Flat"
    assert float(fields["index bytes/vector"]) == pytest.approx(4 * 1280, rel=0.01)
    assert fields["text search"].startswith("no") and "build 150" in fields["history"]


@pytest.mark.parametrize("victim", ["vectors.npy", "paths.txt", "index.faiss", "labels.npy"])
def test_a_corrupted_file_is_refused_naming_it(corel_collection, tmp_path, capsys, victim):
    work = tmp_path / "c"
    shutil.copytree(corel_collection, work)
    manifest = json.loads((work / "manifest.json").read_text())
    path = work / manifest["generation"] / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                          # one flipped byte: same size, other checksum
    path.write_bytes(bytes(data))
    code, out, err = _cbir(capsys, "search", work, "--text", "x")
    assert code == 2 and f"{path} does not match its checksum" in err and "Traceback" not in err
    path.write_bytes(bytes(data[:-8]))                    # truncated: caught by the size even when memory-mapped
    code, _, err = _cbir(capsys, "search", work, "--mmap", "--text", "x")
    assert code == 2 and f"{path} has {len(data) - 8} bytes but the collection's manifest says {len(data)}" in err


def test_not_a_collection_and_existing_collections(tmp_path, corel_collection, capsys):
    code, _, err = _cbir(capsys, "search", tmp_path, "--text", "x")
    assert code == 2 and f"{tmp_path} is not a cbir collection (no manifest.json)" in err
    code, _, err = _cbir(capsys, "index", "build", "--dataset", "demo", "--out", corel_collection, "--no-progress")
    assert code == 2 and "already holds a collection; pass --force to replace it" in err
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = _cbir(capsys, "index", "build", "--dataset", "demo", "--out", tmp_path, "--no-progress")
    assert code == 2 and "is a folder with other files (notes.txt)" in err


def test_an_undecodable_query_is_reported_and_the_others_still_run(corel_collection, corel_photos, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    good = corel_photos[2][0][0]
    code, out, err = _cbir(capsys, "search", corel_collection, bad, good, "--k", "4")
    assert code == 1
    assert f"cbir search: error: {bad}: " in err and "Traceback" not in err
    assert len(_blocks(out)) == 1 and len(_blocks(out)[0][2]) == 4


@pytest.fixture(scope="module")
def clip_collection(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clip") / "demo"
    Collection.build("demo", out, model="clip:ViT-B-32:none", progress=False)
    return out


def test_text_search_with_a_clip_model_returns_k_results_as_documented(clip_collection, capsys, tmp_path):
    code, out, err = _cbir(capsys, "search", clip_collection, "--text", "a red bus", "--k", "7", "--json", tmp_path / "t.json")
    assert code == 0, err
    (query, header, rows), = _blocks(out)
    assert query == "a red bus" and header == "Top 7 most similar images:" and len(rows) == 7
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["model"] == "clip:ViT-B-32:none" and saved["queries"][0]["query"] == "a red bus"
    assert [r["rank"] for r in saved["queries"][0]["results"]] == list(range(1, 8))
    c = Collection.open(clip_collection)
    assert c.manifest["text"] == {"model": "clip:ViT-B-32:none", "tokenizer": "SimpleTokenizer", "context_length": 77}


def test_text_embeddings_are_unit_vectors_deterministic_and_in_the_image_space(clip_collection):
    from cbir_kit.features import create_extractor
    from cbir_kit.features.text import embed_text

    c = Collection.open(clip_collection)
    a = embed_text(c.extractor, ["a red bus", "a cat on a sofa"])
    b = embed_text(create_extractor("clip:ViT-B-32:none"), ["a red bus", "a cat on a sofa"])   # another build
    assert a.shape == (2, c.manifest["dim"]) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[0], a[1])
    # the collection's images, embedded again now, equal the stored rows: one network in every process
    again, errors = c.embed_images([c.paths[0], c.paths[1]])
    assert errors == [None, None]
    np.testing.assert_allclose(again, np.asarray(c.vectors[:2]), atol=1e-5)
    r = c.search(text="a red bus", k=len(c))[0]
    np.testing.assert_allclose(sorted((h.score for h in r.results), reverse=True), np.sort(a[0] @ np.asarray(c.vectors).T)[::-1], atol=1e-5)


def test_text_search_with_an_image_only_model_fails_with_the_documented_message(corel_collection):
    proc = subprocess.run([sys.executable, "-m", "cbir_kit.cli", "search", str(corel_collection), "--text", "a red bus"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "cbir search: error: text search needs a CLIP model, and 'efficientnet_lite0' embeds images only; build a "
        "collection with a CLIP model, such as 'clip:ViT-B-32:laion2b_s34b_b79k' (or 'clip:ViT-B-32:none', random "
        "weights, offline)")


def test_queries_embedded_by_another_model_are_refused(corel_collection):
    c = Collection.open(corel_collection)
    with pytest.raises(CbirError, match="built with model 'efficientnet_lite0'; vectors embedded by 'resnet18'"):
        c.search(vectors=np.zeros((1, 1280), np.float32), model="resnet18")
    with pytest.raises(CbirError, match="vectors= needs model="):
        c.search(vectors=np.zeros((1, 1280), np.float32))
    with pytest.raises(CbirError, match="dimension 512"):
        c.search(vectors=np.ones((1, 512), np.float32), model="efficientnet_lite0")


@pytest.mark.parametrize("spec", [IndexSpec("Flat"), IndexSpec("IVF4,Flat", nprobe=2), IndexSpec("HNSW16", ef_search=32),
                                  IndexSpec("IVF4,PQ8x6", nprobe=4), IndexSpec(hash="itq:32", shortlist=40)])
@pytest.mark.parametrize("mmap", [False, True])
def test_every_index_type_reads_back_and_grows_as_built(spec, mmap, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    paths = [f"img_{i}.jpg" for i in range(300)]
    built = Collection.from_vectors(x[:250], paths[:250], tmp_path / "c", model="resnet18", index=spec,
                                    labels=["a", "b"] * 125)
    in_memory = spec.build(x[:250])
    opened = Collection.open(tmp_path / "c", mmap=mmap)
    expected = in_memory.search(x[250:], 10)
    for c in (built, opened):
        r = c.search(vectors=x[250:], model="resnet18", k=10)
        np.testing.assert_array_equal([[h.id for h in q.results] for q in r], expected[1])
        assert r[0].results[0].path == paths[expected[1][0, 0]] and r[0].results[0].label in ("a", "b")
    # grow it with vectors of images (from_vectors collections add through _append directly)
    opened._append(x[250:], [Path(p) for p in paths[250:]], [f"row:{i}" for i in range(250, 300)], None)
    grown = Collection.open(tmp_path / "c", mmap=mmap)
    assert len(grown) == 300 == grown.index.ntotal
    top = grown.search(vectors=x[250:], model="resnet18", k=1)
    assert [q.results[0].id for q in top] == list(range(250, 300))   # each new vector finds itself
    assert grown.label(299) is None and grown.paths[299].endswith("img_299.jpg")


def test_a_search_during_adds_sees_a_whole_collection(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    Collection.from_vectors(x[:100], [f"{i}.jpg" for i in range(100)], tmp_path / "c", model="resnet18")
    seen, errors, done = [], [], threading.Event()

    def reader():
        while not done.is_set():
            try:
                c = Collection.open(tmp_path / "c")
                n = len(c)
                assert n == len(c.vectors) == c.index.ntotal == len(c.paths) == len(c.labels)
                r = c.search(vectors=x[:1], model="resnet18", k=n)
                assert len(r[0].results) == n and r[0].results[0].id == 0
                seen.append(n)
            except Exception as err:   # noqa: BLE001 - any failure is the test's failure
                errors.append(err)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    writer = Collection.open(tmp_path / "c")
    for start in range(100, 400, 50):
        writer._append(x[start:start + 50], [Path(f"{i}.jpg") for i in range(start, start + 50)],
                       [f"row:{i}" for i in range(start, start + 50)], None)
        writer = Collection.open(tmp_path / "c")
    done.set()
    thread.join()
    assert not errors, errors[0]
    assert set(seen) <= set(range(100, 401, 50)) and len(seen) > 3
    generations = sorted(p.name for p in (tmp_path / "c").iterdir() if p.name.startswith("g"))
    assert len(generations) == 2 and not list((tmp_path / "c").glob(".tmp-*"))   # the current one and the one before


def test_a_failed_write_leaves_the_old_collection_whole(tmp_path, monkeypatch):
    from cbir_kit.collection import collection as module

    x = np.eye(8, dtype=np.float32)
    Collection.from_vectors(x[:4], [f"{i}.jpg" for i in range(4)], tmp_path / "c", model="resnet18")
    before = (tmp_path / "c" / "manifest.json").read_text()

    def broken(index, folder):
        (Path(folder) / "index.faiss").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "write_index", broken)
    with pytest.raises(KeyboardInterrupt):
        Collection.open(tmp_path / "c")._append(x[4:], [Path("4.jpg")] * 4, ["a", "b", "c", "d"], None)
    assert (tmp_path / "c" / "manifest.json").read_text() == before
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [".lock", "g000001", "manifest.json"]
    assert len(Collection.open(tmp_path / "c")) == 4


def test_a_saved_threshold_returns_every_image_within_it(corel_csv, tmp_path, capsys):
    saved = tmp_path / "static.json"
    code, out, err = _cbir(capsys, "evaluate", "--dataset", f"csv:{corel_csv}", "--threshold", "static",
                           "--save-threshold", saved, "--no-progress")
    assert code == 0, err
    rule = json.loads(saved.read_text())
    assert rule["model"] == "efficientnet_lite0" and rule["distance"] == "Euclidean" and rule["threshold"]["method"] == "static"
    out_dir = tmp_path / "corel"
    Collection.build(f"csv:{corel_csv}", out_dir, progress=False)
    query = corel_csv.parent / "query" / "3.jpg"
    code, out, err = _cbir(capsys, "search", out_dir, query, "--threshold", saved, "--json", tmp_path / "r.json")
    assert code == 0, err
    (_, header, rows), = _blocks(out)
    c = Collection.open(out_dir)
    q, _ = c.embed_images([query])
    dist = np.sqrt(np.maximum(0, 2 - 2 * (q @ np.asarray(c.vectors).T)[0]))
    expected = np.flatnonzero(dist < rule["threshold"]["T"])
    assert header == f"{len(expected)} images within the threshold:" and len(rows) == len(expected) > 0
    got = json.loads((tmp_path / "r.json").read_text())["queries"][0]["results"]
    assert sorted(c.paths[i] for i in expected) == sorted(r["path"] for r in got)
    # dynamic: T + w (mu_q - mu), mu_q the mean distance of the n nearest
    dyn = tmp_path / "dynamic.json"
    assert main(["evaluate", "--dataset", f"csv:{corel_csv}", "--threshold", "dynamic", "--save-threshold", str(dyn),
                 "--no-progress"]) == 0
    p = json.loads(dyn.read_text())["threshold"]
    limit = p["T"] + p["w"] * (np.sort(dist)[:p["n"]].mean() - p["mu"])
    r = c.search(images=[query], threshold=dyn)[0]
    assert sorted(h.id for h in r.results) == np.flatnonzero(dist < limit).tolist()
    # a threshold of other features is refused
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**rule, "model": "resnet18"}))
    with pytest.raises(CbirError, match="calibrated on 'resnet18' features but the collection holds 'efficientnet_lite0'"):
        c.search(images=[query], threshold=other)
    code, _, err = _cbir(capsys, "evaluate", "--save-threshold", tmp_path / "x.json", "--no-progress")
    assert code == 2 and "--save-threshold needs --threshold" in err


def test_collection_errors_name_the_fix(tmp_path):
    with pytest.raises(CollectionError, match="does not exist; build one with `cbir index build"):
        Collection.open(tmp_path / "nowhere")
    with pytest.raises(CbirError, match="paths has 2 entries for 3 vectors"):
        Collection.from_vectors(np.eye(3, dtype=np.float32), ["a", "b"], tmp_path / "x", model="resnet18")
    c = Collection.from_vectors(np.eye(3, dtype=np.float32), ["a", "b", "c"], tmp_path / "y", model="resnet18")
    with pytest.raises(CbirError, match="one of images=, text= or vectors="):
        c.search()
    with pytest.raises(CbirError, match="does not exist; give image files or folders"):
        c.add([tmp_path / "missing.jpg"])


def test_the_notebook_explorer_searches_an_uploaded_photo_and_a_text(clip_collection):
    import ipywidgets as W

    from cbir_kit.report.explorer import CollectionExplorer

    c = Collection.open(clip_collection)
    photo = Path(c.paths[5]).read_bytes()
    explorer = CollectionExplorer(c, k=4)
    results, png = explorer.search_upload([{"name": "mine.png", "content": memoryview(photo)},
                                           {"name": "notes.txt", "content": b"hello"}])
    assert [r.query for r in results] == ["mine.png", "notes.txt"]
    assert results[0].results[0].id == 5 and results[0].results[0].score == pytest.approx(1.0, abs=1e-4)
    assert results[1].error.startswith("notes.txt: not an image") and png.startswith(b"\x89PNG")
    panel = explorer.widget()
    upload, text, k = panel.children[0].children
    assert isinstance(upload, W.FileUpload) and not text.disabled
    upload.value = ({"name": "mine.png", "type": "image/png", "size": len(photo), "content": memoryview(photo),
                     "last_modified": datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)},)
    assert panel.png.startswith(b"\x89PNG") and panel.summary == "mine.png: top 4"
    assert panel.children[1].outputs[0]["data"]["text/plain"] == "mine.png: top 4"
    text.value = "a red bus"
    assert panel.summary == "'a red bus': top 4"


def test_the_explorer_offers_no_text_box_for_an_image_only_collection(tmp_path):
    from cbir_kit.report.explorer import CollectionExplorer

    c = Collection.from_vectors(np.eye(3, dtype=np.float32), ["a", "b", "c"], tmp_path / "c", model="resnet18")
    _, text, _ = CollectionExplorer(c).widget().children[0].children
    assert text.disabled and "needs a CLIP collection" in text.placeholder


def test_the_collection_benchmark_measures_both_numbers_side_by_side(tmp_path, capsys):
    code, out, err = _cbir(capsys, "bench", "collection", "--queries", "3", "--size", "3000", "--dim", "16",
                           "--tmp", tmp_path, "--no-progress", "--json", tmp_path / "b.json")
    assert code == 0, err
    result = json.loads((tmp_path / "b.json").read_text())
    q, o = result["query"], result["open"]
    assert q["n_queries"] == 3 and q["n_collection"] == 72 and 0 < q["search_ms"] < q["p50_ms"] <= q["p95_ms"]
    assert o["size"] == 3000 and o["open_ratio"] == pytest.approx(o["open_full_s"] / o["open_mmap_s"])
    assert "memory-mapped opens" in out and "p50" in out
    assert list(tmp_path.iterdir()) == [tmp_path / "b.json"]          # the synthetic collection is removed


def test_an_index_that_cannot_add_says_so_and_offers_the_rebuild():
    import faiss

    from cbir_kit.index.ann import AnnIndex
    from cbir_kit.index.persist import add_to_index

    index = AnnIndex("IDMap,Flat")
    index.index_ = faiss.index_factory(4, "IDMap,Flat", faiss.METRIC_INNER_PRODUCT)   # adds only with ids
    with pytest.raises(CbirError, match="this index cannot add vectors .*; rebuild the collection with the new images"):
        add_to_index(index, np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32))


def test_growing_a_trained_index_far_past_its_training_set_suggests_a_rebuild(tmp_path):
    from cbir_kit.errors import CbirWarning

    x = np.random.default_rng(3).normal(size=(700, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = Collection.from_vectors(x[:300], [f"{i}" for i in range(300)], tmp_path / "c", model="resnet18",
                                index="IVF4,Flat")
    c._append(x[300:500], [Path(str(i)) for i in range(300, 500)], [f"r{i}" for i in range(300, 500)], None)
    c = Collection.open(tmp_path / "c")
    with pytest.warns(CbirWarning, match="grown to 700 items from the 300 its index was trained on; .* rebuild it"):
        c._append(x[500:], [Path(str(i)) for i in range(500, 700)], [f"r{i}" for i in range(500, 700)], None)


def test_a_generation_left_by_a_writer_killed_before_its_manifest_does_not_block_later_writes(tmp_path):
    x = np.eye(8, dtype=np.float32)
    c = Collection.from_vectors(x[:4], [f"{i}.jpg" for i in range(4)], tmp_path / "c", model="resnet18")
    (tmp_path / "c" / "g000002").mkdir()                     # renamed into place, then the writer died
    (tmp_path / "c" / "g000002" / "vectors.npy").write_bytes(b"half")
    c._append(x[4:], [Path(f"{i}.jpg") for i in range(4, 8)], [f"r{i}" for i in range(4, 8)], None)
    grown = Collection.open(tmp_path / "c")
    assert len(grown) == 8 and grown.manifest["generation"] == "g000003"
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if p.name.startswith("g")) == ["g000001", "g000003"]


def test_a_truncated_upload_is_reported_and_the_others_keep_their_own_results(clip_collection):
    from cbir_kit.report.explorer import CollectionExplorer

    c = Collection.open(clip_collection)
    photo = Path(c.paths[7]).read_bytes()
    other = Path(c.paths[20]).read_bytes()
    results, _ = CollectionExplorer(c, k=2).search_upload([{"name": "cut.png", "content": photo[:len(photo) // 2]},
                                                           {"name": "whole.png", "content": other}])
    assert results[0].error and results[0].error.startswith("cut.png: not an image")
    assert results[1].query == "whole.png" and results[1].results[0].id == 20
