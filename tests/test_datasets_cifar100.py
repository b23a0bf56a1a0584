"""CIFAR-100: the downloader against a local server serving a small archive in the real format."""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest

from cbir_kit.datasets import load
from cbir_kit.datasets.cifar100 import CifarImage, fetch_cifar100, load_cifar100, read_extracted
from cbir_kit.datasets.download import ChecksumError
from cbir_kit.datasets.images import fingerprint, open_image
from cbir_kit.evaluation.metrics import hierarchy_similarity

FINE = ["apple", "pear", "shark", "trout"]
COARSE = ["fruit", "fish"]
FINE_TO_COARSE = np.array([0, 0, 1, 1])
N_TRAIN_PER_CLASS, N_TEST_PER_CLASS = 6, 5


def _split(n_per_class: int, rng) -> tuple[dict, np.ndarray]:
    fine = np.repeat(np.arange(len(FINE)), n_per_class)
    rng.shuffle(fine)
    pixels = rng.integers(0, 256, size=(len(fine), 32, 32, 3), dtype=np.uint8)  # (N, H, W, C)
    data = pixels.transpose(0, 3, 1, 2).reshape(len(fine), 3072)  # R plane, G plane, B plane
    return {b"batch_label": b"fixture", b"filenames": [f"img_{i}.png".encode() for i in range(len(fine))],
            b"fine_labels": fine.tolist(), b"coarse_labels": FINE_TO_COARSE[fine].tolist(),
            b"data": data}, pixels


def _archive() -> tuple[bytes, np.ndarray, dict]:
    """A cifar-100-python.tar.gz in the real layout; returns (bytes, test pixels, test dict)."""
    rng = np.random.default_rng(123)
    train, _ = _split(N_TRAIN_PER_CLASS, rng)
    test, test_pixels = _split(N_TEST_PER_CLASS, rng)
    meta = {b"fine_label_names": [n.encode() for n in FINE], b"coarse_label_names": [n.encode() for n in COARSE]}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, obj in (("train", train), ("test", test), ("meta", meta)):
            payload = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue(), test_pixels, test


ARCHIVE, TEST_PIXELS, TEST = _archive()
MD5 = hashlib.md5(ARCHIVE).hexdigest()


@pytest.fixture
def server(http_server):
    http_server.files["/cifar-100-python.tar.gz"] = ARCHIVE
    return http_server


def _load(server, root, **kw):
    return load_cifar100(root=root, url=server.url("/cifar-100-python.tar.gz"), md5=MD5, progress=False,
                         queries_per_class=kw.pop("queries_per_class", 2), **kw)


def test_fetch_extract_and_serve_images(server, tmp_path):
    ds = _load(server, tmp_path)
    assert ds.name == "cifar100"
    assert ds.n_gallery == len(FINE) * N_TRAIN_PER_CLASS and ds.n_queries == len(FINE) * 2
    assert not ds.leave_one_out
    assert ds.class_names == FINE
    # stratified: 2 queries per fine class, all from the test split, distinct
    assert sorted(ds.query_labels.tolist()) == sorted(FINE * 2)
    assert all(q.split.name == "test" for q in ds.query) and all(g.split.name == "train" for g in ds.gallery)
    assert len({q.index for q in ds.query}) == ds.n_queries
    # pixels decode exactly as the R/G/B planes were packed, through the toolkit's image opener
    q = ds.query[0]
    img = open_image(q)
    assert img.mode == "RGB" and img.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(img), TEST_PIXELS[q.index])
    assert ds.query_labels[0] == FINE[TEST[b"fine_labels"][q.index]]
    # cache keys: stable, distinct per image, used by the feature cache
    assert fingerprint(q) == q.cache_key
    assert len({r.cache_key for r in ds.query + ds.gallery}) == ds.n_queries + ds.n_gallery
    # no loose image files: the archive's three pickles only
    files = sorted(p.name for p in (tmp_path / "cifar100" / "cifar-100-python").iterdir())
    assert files == ["meta", "test", "train"]


def test_hierarchy_and_label_names(server, tmp_path):
    ds = _load(server, tmp_path)
    np.testing.assert_array_equal(ds.info["fine_to_coarse"], FINE_TO_COARSE)
    assert ds.info["coarse_label_names"] == COARSE
    assert ds.info["coarse_of"] == {"apple": "fruit", "pear": "fruit", "shark": "fish", "trout": "fish"}
    cifar = ds.info["cifar"]
    assert cifar.fine_label_names == FINE and len(cifar.train) == 24 and len(cifar.test) == 20
    np.testing.assert_array_equal(cifar.test.coarse_labels, FINE_TO_COARSE[cifar.test.fine_labels])
    # the hierarchy plugs into the hierarchical metrics as it is
    sim = hierarchy_similarity(np.array(["apple"] * 3, dtype=object),
                               np.array(["apple", "pear", "trout"], dtype=object), ds.info["coarse_of"])
    np.testing.assert_array_equal(sim, [1.0, 0.5, 0.0])


def test_same_seed_same_manifest_on_two_machines(server, tmp_path):
    a = _load(server, tmp_path / "machine_a", seed=7)
    b = _load(server, tmp_path / "machine_b", seed=7)
    c = _load(server, tmp_path / "machine_b", seed=8)
    assert a.info["manifest_sha256"] == b.info["manifest_sha256"]
    assert c.info["manifest_sha256"] != a.info["manifest_sha256"]
    # the manifest is written once and read back unchanged
    again = _load(server, tmp_path / "machine_a", seed=7)
    assert again.info["manifest_sha256"] == a.info["manifest_sha256"]
    assert [q.index for q in again.query] == [q.index for q in a.query]


def test_test_protocol_is_leave_one_out(server, tmp_path):
    ds = _load(server, tmp_path, protocol="test")
    assert ds.leave_one_out and ds.n_queries == ds.n_gallery == len(FINE) * N_TEST_PER_CLASS
    assert (ds.n_relevant() == N_TEST_PER_CLASS - 1).all()


def test_checksum_mismatch_extracts_nothing(server, tmp_path):
    with pytest.raises(ChecksumError, match="does not match"):
        fetch_cifar100(tmp_path, url=server.url("/cifar-100-python.tar.gz"), md5="f" * 32, progress=False)
    assert not (tmp_path / "cifar100" / "cifar-100-python").exists()
    assert not (tmp_path / "cifar100" / "cifar-100-python.tar.gz").exists()


def test_truncated_transfer_resumes(server, tmp_path):
    server.truncate["/cifar-100-python.tar.gz"] = 2
    folder = fetch_cifar100(tmp_path, url=server.url("/cifar-100-python.tar.gz"), md5=MD5, progress=False)
    ranges = [r for _, r in server.requests]
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:]) and len(ranges) == 3
    assert read_extracted(folder).fine_label_names == FINE


def test_corrupt_hand_placed_archive_is_refetched(server, tmp_path):
    home = tmp_path / "cifar100"
    home.mkdir()
    (home / "cifar-100-python.tar.gz").write_bytes(ARCHIVE[: len(ARCHIVE) // 3])
    ds = _load(server, tmp_path)
    assert ds.n_gallery == 24
    assert len(server.requests) == 1


def test_second_load_is_offline(server, tmp_path):
    _load(server, tmp_path)
    n = len(server.requests)
    server.files.clear()  # the server would now answer 404
    ds = load("cifar100", root=tmp_path, url=server.url("/cifar-100-python.tar.gz"), md5=MD5,
              queries_per_class=2, progress=False)
    assert ds.n_queries == 8 and len(server.requests) == n


def test_cifar_image_repr_and_name(server, tmp_path):
    ds = _load(server, tmp_path)
    g = ds.gallery[3]
    assert isinstance(g, CifarImage) and g.name == "cifar100/train/00003" and "train/00003" in repr(g)
