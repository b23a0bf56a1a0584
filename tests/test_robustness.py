"""Robustness: resumable and verified feature cache, concurrent processes, bad input, determinism.

Cache-logic tests use a tiny 8-d convolutional extractor (fast); the SIGKILL and two-process
tests run the real offline model in subprocesses, as a user would.
"""
from __future__ import annotations

import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cbir_kit.datasets import Dataset, load
from cbir_kit.errors import CbirError
from cbir_kit.pipeline.job import evaluate
from cbir_kit.features import FeatureCache, create_extractor
from cbir_kit.features.cache import ChunkPolicy
from cbir_kit.features.extractor import Extractor, split_preprocess
from cbir_kit.features.models import Backbone, imagenet_preprocess
from cbir_kit.datasets.images import ImageLoadError, open_image
from cbir_kit.index import ExactIndex

REPO = Path(__file__).resolve().parents[1]


class TinyExtractor(Extractor):
    """A seeded 8-d conv net behind the real pipeline (threads, uint8 batches, streaming)."""

    def __init__(self, batch_size: int = 2):
        super().__init__("efficientnet_lite0", device="cpu", batch_size=batch_size, num_workers=2)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8))
        self._backbone = Backbone(model.eval(), imagenet_preprocess(40, 32), 8, "test")
        self._split = split_preprocess(self._backbone.preprocess)

    def cache_identity(self) -> dict:
        return {"model": "tiny-test"}


class Crashing:
    """An image reference whose decoding kills the run (an exception that is not a bad image)."""

    def __init__(self, img: Image.Image, armed: dict):
        self.img, self.armed, self.cache_key = img, armed, f"crash-{id(img)}"

    def open(self):
        if self.armed["on"]:
            raise RuntimeError("simulated crash")
        return self.img


def _pictures(n: int, size=(48, 40), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _stray(cache: Path) -> list[str]:
    """Anything in a cache folder besides finished entries (KEY.npy, KEY.json): no lock, no partial entry."""
    return [f for f in _files(cache) if not f.endswith((".npy", ".json")) or "/" in f or f.startswith(".")]


# ---------------------------------------------------------------- resumable, verified cache

def test_interrupted_extraction_resumes_from_last_chunk_bit_identical(tmp_path):
    imgs = _pictures(11)
    clean, hit = FeatureCache(tmp_path / "clean", chunk_size=4).get_or_extract(TinyExtractor(), imgs, False)
    assert not hit and clean.ok.all()

    armed = {"on": True}
    refs = imgs[:9] + [Crashing(imgs[9], armed)] + imgs[10:]
    cache = FeatureCache(tmp_path / "resumed", chunk_size=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cache.get_or_extract(TinyExtractor(), refs, False)
    partial = next((tmp_path / "resumed").glob("*.partial"))
    manifest = json.loads((partial / "manifest.json").read_text())
    assert [(c["start"], c["stop"]) for c in manifest["chunks"]] == [(0, 4), (4, 8)]  # images 8-9 lost
    assert not list((tmp_path / "resumed").glob("*.lock"))

    armed["on"] = False
    calls = []
    ex = TinyExtractor()
    stream = ex.stream
    ex.stream = lambda images, ranges, bar=None: (calls.append(list(ranges)), stream(images, ranges, bar))[1]
    resumed, hit = cache.get_or_extract(ex, refs, False)
    assert not hit and calls == [[(8, 10), (10, 11)]]  # only the missing chunk was extracted
    refs_clean, _ = FeatureCache(tmp_path / "clean2", chunk_size=4).get_or_extract(TinyExtractor(), refs, False)
    assert np.array_equal(resumed.vectors, refs_clean.vectors)
    assert np.array_equal(resumed.vectors[:9], clean.vectors[:9])
    assert _stray(tmp_path / "resumed") == []


def test_corrupt_chunk_is_discarded_with_a_warning_and_recomputed(tmp_path):
    imgs = _pictures(8)
    armed = {"on": True}
    refs = imgs[:6] + [Crashing(imgs[6], armed), imgs[7]]
    cache = FeatureCache(tmp_path, chunk_size=2)
    with pytest.raises(RuntimeError):
        cache.get_or_extract(TinyExtractor(), refs, False)
    chunk = next(tmp_path.glob("*.partial")) / "chunk-000000002.npy"
    raw = bytearray(chunk.read_bytes())
    raw[-3] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    armed["on"] = False
    with pytest.warns(UserWarning, match="chunk-000000002.npy is corrupt .*checksum"):
        feats, _ = cache.get_or_extract(TinyExtractor(), refs, False)
    clean, _ = FeatureCache(tmp_path / "clean", chunk_size=2).get_or_extract(TinyExtractor(), refs, False)
    assert np.array_equal(feats.vectors, clean.vectors)


@pytest.mark.parametrize("damage", ["truncate", "flip", "shape", "json", "missing_meta"])
def test_corrupt_entry_is_never_loaded(tmp_path, damage):
    imgs = _pictures(5)
    cache = FeatureCache(tmp_path, chunk_size=2)
    clean = np.array(cache.get_or_extract(TinyExtractor(), imgs, False)[0].vectors)  # a copy, not the mapping
    vec = next(tmp_path.glob("*.npy"))
    meta = vec.with_suffix(".json")
    if damage == "truncate":
        vec.write_bytes(vec.read_bytes()[:-10])
    elif damage == "flip":
        raw = bytearray(vec.read_bytes())
        raw[-1] ^= 0x01
        vec.write_bytes(bytes(raw))
    elif damage == "shape":  # same bytes, other shape: the header lies about the rows
        np.save(vec, clean.reshape(10, 4))
    elif damage == "json":
        meta.write_text("{not json")
    else:
        meta.unlink()
    if damage == "missing_meta":  # a run killed between its two renames: silently incomplete
        feats, hit = cache.get_or_extract(TinyExtractor(), imgs, False)
    else:
        with pytest.warns(UserWarning, match="is corrupt .*discarding it and recomputing"):
            feats, hit = cache.get_or_extract(TinyExtractor(), imgs, False)
    assert not hit and np.array_equal(feats.vectors, clean)
    again, hit = cache.get_or_extract(TinyExtractor(), imgs, False)
    assert hit and np.array_equal(again.vectors, clean)


def test_loaded_features_are_copy_on_write_and_stray_temp_files_are_cleaned(tmp_path):
    imgs = _pictures(3)
    cache = FeatureCache(tmp_path)
    feats, _ = cache.get_or_extract(TinyExtractor(), imgs, False)
    key = next(tmp_path.glob("*.npy")).stem
    (tmp_path / f".{key}.npy-leftover.tmp").write_bytes(b"half")  # a publish killed mid-write
    cached, hit = cache.get_or_extract(TinyExtractor(), imgs, False)
    cached.vectors[:] = 0  # must not reach the file
    again, hit = cache.get_or_extract(TinyExtractor(), imgs, False)
    assert hit and np.array_equal(again.vectors, feats.vectors)
    (tmp_path / f"{key}.json").unlink()  # force a recompute, which cleans the leftover
    cache.get_or_extract(TinyExtractor(), imgs, False)
    assert _stray(tmp_path) == []


def test_chunk_size_is_validated(monkeypatch):
    monkeypatch.setenv("CBIR_CHUNK_SIZE", "zero")
    with pytest.raises(CbirError, match="CBIR_CHUNK_SIZE"):
        FeatureCache()
    with pytest.raises(CbirError, match="chunk size"):
        FeatureCache(chunk_size=0)
    monkeypatch.delenv("CBIR_CHUNK_SIZE")
    with pytest.raises(CbirError, match="chunk_seconds"):
        FeatureCache(chunk_seconds=0)


def test_chunks_are_sized_by_seconds_of_work_within_bounds():
    policy = ChunkPolicy(seconds=5.0, min_rows=16, max_rows=8192)
    assert not policy.full(499, 0.01) and policy.full(500, 0.01)  # 100 images/s: 500 images = 5 s
    assert not policy.full(15, 1.0) and policy.full(16, 1.0)  # a slow model: at least 16 images
    assert not policy.full(8191, 1e-5) and policy.full(8192, 1e-5)  # a fast GPU: at most 8192 images
    fixed = ChunkPolicy.fixed(4)
    assert not fixed.full(3, 10.0) and fixed.full(4, 0.0)


class SlowExtractor(TinyExtractor):
    """TinyExtractor taking ``seconds`` per batch; ``extracted`` counts the images it embedded."""

    def __init__(self, seconds: float = 0.01):
        super().__init__()
        self.seconds, self.extracted = seconds, 0

    def embed_batch(self, batch):
        time.sleep(self.seconds)
        self.extracted += len(batch)
        return super().embed_batch(batch)


def _interrupt_after(extractor: Extractor, n_images: int) -> None:
    """Make ``extractor.stream`` raise KeyboardInterrupt (a Ctrl-C) once ``n_images`` images were yielded."""
    stream = extractor.stream

    def interrupted(images, ranges, bar=None):
        for batch in stream(images, ranges, bar):
            yield batch
            if batch.stop >= n_images:
                raise KeyboardInterrupt

    extractor.stream = interrupted


def test_ctrl_c_in_a_small_gallery_keeps_finished_chunks_for_the_rerun(tmp_path):
    imgs = _pictures(40)
    clean, _ = FeatureCache(tmp_path / "clean").get_or_extract(TinyExtractor(), imgs, False)
    assert _stray(tmp_path / "clean") == []  # a clean run leaves no lock and no partial entry

    cache = FeatureCache(tmp_path / "cache", chunk_seconds=0.01)  # a chunk per 16 images (the minimum)
    first = SlowExtractor()
    _interrupt_after(first, 36)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_extract(first, imgs, False)
    partial, = (tmp_path / "cache").glob("*.partial")
    manifest = json.loads((partial / "manifest.json").read_text())
    assert [(c["start"], c["stop"]) for c in manifest["chunks"]] == [(0, 16), (16, 32)]
    assert not list((tmp_path / "cache").glob("*.lock"))

    again = SlowExtractor()
    feats, hit = cache.get_or_extract(again, imgs, False)
    assert not hit and again.extracted == 8  # only images 32-39
    assert np.array_equal(feats.vectors, clean.vectors)  # bit-identical to the uninterrupted run
    assert _stray(tmp_path / "cache") == []


def test_the_lock_excludes_others_although_each_holder_removes_its_file(tmp_path):
    import threading

    cache, inside, most = FeatureCache(tmp_path), [0], [0]

    def work():
        for _ in range(10):
            with cache.lock("key"):
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                time.sleep(0.002)
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and _files(tmp_path) == []


def test_ctrl_c_before_the_first_chunk_leaves_no_partial_entry_and_no_lock(tmp_path):
    class Downloading(TinyExtractor):
        @property
        def dim(self):  # the network is built (its weights downloaded) on first use
            raise KeyboardInterrupt

    cache = FeatureCache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_extract(Downloading(), _pictures(3), False)
    assert _files(tmp_path) == []


def _class_folder(root: Path, n_per_class: int = 16, classes=("red", "green", "blue", "grey")) -> Path:
    """Small JPEG photos-to-be: a class colour plus seeded noise and a random rectangle."""
    rng = np.random.default_rng(1)
    base = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200), "grey": (128, 128, 128)}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            arr = np.clip(np.array(base[c]) + rng.normal(0, 40, (48, 64, 3)), 0, 255).astype(np.uint8)
            y, x = rng.integers(0, 30, 2)
            arr[y:y + 16, x:x + 24] = rng.integers(0, 255, 3)
            Image.fromarray(arr).save(root / c / f"{i:02d}.jpg", quality=90)
    return root


def _cbir(*args: str) -> list[str]:
    return [sys.executable, "-m", "cbir_kit.cli", "evaluate", "--device", "cpu", "--no-progress", *args]


def _chunks_done(cache: Path) -> int:
    try:
        return len(json.loads(next(cache.glob("*.partial/manifest.json")).read_text())["chunks"])
    except (StopIteration, OSError, ValueError):
        return 0


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_identical_features_and_metrics(tmp_path, monkeypatch):
    folder = _class_folder(tmp_path / "photos", n_per_class=16)  # 64 images, 16 chunks of 4
    monkeypatch.setenv("CBIR_CHUNK_SIZE", "4")
    clean = evaluate(f"folder:{folder}", device="cpu", batch_size=2, cache_dir=tmp_path / "clean", progress=False)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    common = ["--dataset", f"folder:{folder}", "--batch-size", "2"]

    cache = tmp_path / "killed"
    rng = random.Random(10)
    left_behind = []  # committed chunks found right after each kill
    targets = sorted(rng.sample(range(1, 13), 3))  # kill after 1..12 of the 16 chunks, then a moment later
    for target in targets:
        proc = subprocess.Popen(_cbir(*common, "--cache", str(cache)), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while proc.poll() is None and _chunks_done(cache) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.02))  # at least 3 chunks (and the publish) are still to come
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            left_behind.append(_chunks_done(cache))
        proc.wait(timeout=60)
    assert len(left_behind) == len(targets), "a run finished before its kill; kill earlier"
    assert max(left_behind) >= 1  # killed runs left committed work behind
    done = subprocess.run(_cbir(*common, "--cache", str(cache), "--json", str(tmp_path / "resumed.json")),
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    clean_vec, = (tmp_path / "clean").glob("*.npy")
    resumed_vec, = cache.glob("*.npy")
    assert clean_vec.name == resumed_vec.name
    assert np.array_equal(np.load(clean_vec), np.load(resumed_vec))  # bit-identical, NaN-free
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["metrics"] == clean.metrics and resumed["config"]["seed"] == clean.config["seed"] == 0
    assert not resumed["cache"]["hit"]
    assert _stray(cache) == []


_EXTRACT_SCRIPT = """
import sys, numpy as np
from cbir_kit.features import FeatureCache, create_extractor
from cbir_kit.features.cache import ChunkPolicy
paths = sys.argv[3:]
feats, hit = FeatureCache(sys.argv[1], chunk_size=4).get_or_extract(
    create_extractor(device="cpu", batch_size=4), paths, progress=False)
np.save(sys.argv[2], feats.vectors)
print("hit" if hit else "miss")
"""


@pytest.mark.slow
def test_two_processes_extracting_the_same_features_make_one_correct_cache(tmp_path):
    folder = _class_folder(tmp_path / "photos", n_per_class=4)
    paths = [str(p) for p in sorted(folder.rglob("*.jpg"))]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", _EXTRACT_SCRIPT, str(cache), str(tmp_path / f"out{i}.npy"),
                               *paths], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert sorted(o[0].strip() for o in outs) == ["hit", "miss"]  # one extracted, the other waited and loaded
    a, b = np.load(tmp_path / "out0.npy"), np.load(tmp_path / "out1.npy")
    assert np.array_equal(a, b) and np.isfinite(a).all()
    vec, = cache.glob("*.npy")
    assert np.array_equal(np.load(vec), a)
    assert _stray(cache) == []


# ---------------------------------------------------------------- bad input

def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _write_bad_files(folder: Path) -> dict[str, str]:
    """One file of every bad kind; returns file name -> expected words of its reason."""
    good = io.BytesIO()
    _pictures(1, (64, 64))[0].save(good, format="JPEG")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image")
    (folder / "bomb.png").write_bytes(_png_header_only(30000, 30000))
    return {"truncated.jpg": "cannot decode", "empty.jpg": "empty file", "notes.png": "not an image",
            "bomb.png": "decompression bomb"}


def test_each_bad_file_kind_raises_a_named_image_load_error(tmp_path):
    expected = _write_bad_files(tmp_path)
    for name, words in expected.items():
        with pytest.raises(ImageLoadError, match=words) as err:
            open_image(tmp_path / name)
        assert name in str(err.value)
    with pytest.raises(ImageLoadError, match="file not found"):
        open_image(tmp_path / "absent.jpg")


def test_16_bit_cmyk_and_palette_images_decode_to_rgb(tmp_path):
    ramp = (np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) * 30)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    deep = open_image(tmp_path / "deep.png")
    assert deep.mode == "RGB" and np.asarray(deep)[..., 0].max() == 255  # rescaled, not clipped to white
    assert np.asarray(deep)[0, 0, 0] == 0
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red in CMYK
    red = np.asarray(open_image(tmp_path / "cmyk.jpg")).astype(int)
    assert red.shape == (10, 20, 3) and red[..., 0].mean() > 200 and red[..., 1:].mean() < 60
    Image.new("P", (8, 8)).save(tmp_path / "palette.gif")
    assert open_image(tmp_path / "palette.gif").mode == "RGB"


def test_exif_orientation_is_honoured(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red, right half blue
    arr[:, 20:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    shown = np.asarray(open_image(tmp_path / "rotated.jpg")).astype(int)
    assert shown.shape == (40, 20, 3)  # portrait once rotated
    assert shown[:15, :, 0].mean() > 200 and shown[25:, :, 2].mean() > 200  # left became the top


def test_a_folder_with_every_bad_kind_completes_and_lists_each_bad_file(tmp_path):
    folder = _class_folder(tmp_path / "photos", n_per_class=3, classes=("red", "blue"))
    expected = _write_bad_files(folder / "red")
    Image.fromarray((np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20)).save(folder / "blue" / "deep.png")
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(folder / "red" / "cmyk.jpg")
    result = evaluate(f"folder:{folder}", device="cpu", cache_dir=tmp_path / "cache", progress=False, k=3)
    reasons = {Path(img).name: reason for img, reason in result.skipped}
    assert set(reasons) == set(expected)
    for name, words in expected.items():
        assert words in reasons[name]
    assert result.n_gallery == 8 and "skipped 4 image(s)" in result.table()
    assert np.isfinite(list(result.metrics.values())).all()


def test_nan_and_zero_feature_vectors_are_reported_not_indexed(tmp_path):
    ex = TinyExtractor(batch_size=4)
    real_embed = ex.embed_batch

    def embed(x):
        out = real_embed(x)
        out[1] = 0.0
        out[2] = float("nan")
        return out
    ex.embed_batch = embed
    feats = ex.extract(_pictures(4), progress=False)
    assert feats.ok.tolist() == [True, False, False, True]
    assert [(i, "zero" in r or "NaN" in r) for i, _, r in feats.failures] == [(1, True), (2, True)]
    assert "all-zero" in feats.failures[0][2] and "NaN" in feats.failures[1][2]
    with pytest.raises(CbirError, match=r"NaN or infinite values in rows \[1, 2\]"):
        ExactIndex().fit(np.where(feats.ok[:, None], feats.vectors, np.nan))


def test_search_errors_name_the_problem():
    gallery = np.eye(4, dtype=np.float32)
    with pytest.raises(CbirError, match="before fit"):
        ExactIndex().search(gallery, 2)
    index = ExactIndex().fit(gallery)
    with pytest.raises(CbirError, match="dimension 3 but the gallery has 4"):
        index.search(np.ones((1, 3), np.float32), 2)
    scores, ids = index.search(gallery[:1], 50)  # k larger than the gallery: the whole gallery, ranked
    assert ids.shape == (1, 4) and ids[0, 0] == 0 and sorted(ids[0]) == [0, 1, 2, 3]
    with pytest.raises(CbirError, match="k must be at least 1"):
        index.search(gallery[:1], 0)
    with pytest.raises(CbirError, match="2-D"):
        index.search(np.ones(4, np.float32), 1)


def test_empty_query_set_and_bad_k_are_clear_errors(tmp_path):
    img = tmp_path / "a.png"
    _pictures(1)[0].save(img)
    ds = Dataset("tiny", query=[], gallery=[str(img)], query_labels=[], gallery_labels=["a"])
    with pytest.raises(CbirError, match="query set is empty"):
        evaluate(ds, device="cpu", progress=False)
    with pytest.raises(CbirError, match="k=0 must be at least 1"):
        evaluate(ds, device="cpu", progress=False, k=0)


def test_manifest_problems_are_named(tmp_path):
    _pictures(1)[0].save(tmp_path / "a.png")
    cases = {
        "split,path\ngallery,a.png\n": "lacks column",
        "split,path,label\ngallery,missing.png,x\nquery,a.png,x\n": "missing file",
        "split,path,label\ngallery,a.png,x\ngallery,a.png,y\nquery,a.png,x\n": "duplicate gallery path",
    }
    for i, (text, words) in enumerate(cases.items()):
        csv = tmp_path / f"m{i}.csv"
        csv.write_text(text)
        with pytest.raises(CbirError, match=words):
            load(f"csv:{csv}")
    odd = tmp_path / "odd.csv"
    odd.write_text('split,path,label\ngallery,a.png,"c, with ""quotes"" é"\nquery,a.png,"c, with ""quotes"" é"\n')
    ds = load(f"csv:{odd}")
    assert ds.gallery_labels.tolist() == ['c, with "quotes" é']


# ---------------------------------------------------------------- determinism

def test_same_extraction_twice_is_bit_identical():
    imgs = _pictures(6)
    a = TinyExtractor(batch_size=3).extract(imgs, progress=False)
    b = TinyExtractor(batch_size=3).extract(imgs, progress=False)
    assert np.array_equal(a.vectors, b.vectors)


def test_same_evaluation_twice_gives_identical_features_rankings_and_metrics(demo_features, tmp_path):
    """The session's cached demo features (first run) against a fresh extraction (second run)."""
    query, gallery, ds = demo_features
    first = evaluate(ds, device="cpu", progress=False)
    second = evaluate(ds, device="cpu", cache_dir=tmp_path, progress=False)
    assert first.cache["hit"] and not second.cache["hit"]
    fresh = FeatureCache(tmp_path).get_or_extract(create_extractor(device="cpu"), ds.gallery, False)[0]
    assert np.array_equal(fresh.vectors, gallery)
    assert first.metrics == second.metrics
    assert np.array_equal(first.ranked_ids, second.ranked_ids)
    assert second.to_dict()["config"]["seed"] == 0


def test_an_unusable_cache_folder_is_one_clear_line(tmp_path, capsys):
    """A cache folder that cannot be written (here: below a plain file) is named with the fix, no traceback."""
    from cbir_kit.cli import main

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    assert main(["evaluate", "--cache", str(blocker / "cache"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(blocker / "cache") in err[0] and "--cache" in err[0] and "Traceback" not in err[0]


class CountingExtractor(TinyExtractor):
    """Counts the images it really embeds."""

    def __init__(self):
        super().__init__()
        self.embedded = 0

    def embed_batch(self, batch):
        self.embedded += len(batch)
        return super().embed_batch(batch)


def _image_files(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(_pictures(n, seed=seed)):
        paths.append(folder / f"im{i:02d}.png")
        img.save(paths[-1])
    return paths


def test_the_cache_reuses_each_images_features_wherever_the_same_content_appears(tmp_path):
    paths = _image_files(tmp_path / "imgs", 12)
    cache = FeatureCache(tmp_path / "cache")
    ex = CountingExtractor()
    first, hit = cache.get_or_extract(ex, paths[:8], progress=False)
    assert not hit and ex.embedded == 8
    shuffled = [paths[i] for i in (7, 3, 0, 5, 1, 6, 2, 4)]                   # the same images, another order
    again, hit = cache.get_or_extract(ex, shuffled, progress=False)
    assert hit and ex.embedded == 8
    np.testing.assert_array_equal(again.vectors, first.vectors[[7, 3, 0, 5, 1, 6, 2, 4]])
    superset, hit = cache.get_or_extract(ex, paths, progress=False)            # 4 new images: only they run
    assert not hit and ex.embedded == 12
    fresh, _ = FeatureCache(tmp_path / "other").get_or_extract(TinyExtractor(), paths, progress=False)
    np.testing.assert_allclose(superset.vectors, fresh.vectors, atol=1e-6)
    _pictures(1, seed=9)[0].save(paths[2])                                   # changed content: embedded again
    changed, _ = cache.get_or_extract(ex, paths[:8], progress=False)
    assert ex.embedded == 13 and not np.allclose(changed.vectors[2], first.vectors[2])
    np.testing.assert_array_equal(changed.vectors[[0, 1, 3]], first.vectors[[0, 1, 3]])
    assert _stray(tmp_path / "cache") == []
