"""Scale-out on a real Dask LocalCluster of two worker processes: the results equal one process's, to the bit.

Extraction (one task per cache chunk), resuming after a worker or the driver is killed, an IVF index
filled in shards and merged, two index shards searched as one, and clear errors instead of hangs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np
import pytest
from PIL import Image

distributed = pytest.importorskip("distributed")

from cbir_kit import evaluate  # noqa: E402
from cbir_kit.cluster import cluster_client, parse_cluster  # noqa: E402
from cbir_kit.errors import CbirError  # noqa: E402
from cbir_kit.features import FeatureCache, create_extractor  # noqa: E402
from cbir_kit.features.distributed import ClusterExtraction, task_ranges  # noqa: E402
from cbir_kit.index import ExactIndex  # noqa: E402
from cbir_kit.index.ann import AnnIndex  # noqa: E402
from cbir_kit.index.exact import search_ties_at_cut  # noqa: E402
from cbir_kit.index.sharded import build_sharded  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    with cluster_client("local:2") as c:
        yield c


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    """24 real-photo-like images in 3 class folders (decoded from disk), one of them corrupt."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for c, colour in enumerate([(200, 40, 40), (40, 160, 60), (50, 70, 200)]):
        (folder / f"class{c}").mkdir()
        for i in range(8):
            pixels = np.clip(np.array(colour) + rng.normal(0, 50, (60, 80, 3)), 0, 255).astype(np.uint8)
            path = folder / f"class{c}" / f"{i}.jpg"
            Image.fromarray(pixels).save(path, quality=90)
            paths.append(str(path))
    Path(paths[13]).write_bytes(b"not a jpeg at all")
    return paths


def _extract(cache_dir, images, remote=None):
    cache = FeatureCache(cache_dir, remote=remote)
    feats, hit = cache.get_or_extract(create_extractor(device="cpu", batch_size=2), images, progress=False)
    return feats, hit, cache


def test_the_cluster_spec(monkeypatch):
    assert parse_cluster("none") == ("none", None) and parse_cluster(None) == ("none", None)
    assert parse_cluster("local:3") == ("local", 3) and parse_cluster("tcp://10.0.0.5:8786")[0] == "address"
    for bad in ("local:0", "local:x", "cluster", "10.0.0.5:8786"):
        with pytest.raises(CbirError, match=r"cluster='.*'"):
            parse_cluster(bad)
    monkeypatch.setitem(sys.modules, "distributed", None)          # as if Dask were not installed
    with pytest.raises(CbirError, match=r"cluster= needs Dask, which is not installed: pip install -e \".\[cluster\]\""):
        with cluster_client("local:2"):
            pass


def test_the_default_path_never_imports_dask():
    code = ("import sys; from cbir_kit.pipeline import job; from cbir_kit.features.distributed import cluster_extraction;"
            "assert cluster_extraction('none').__enter__() is None; print('distributed' in sys.modules, 'dask' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_task_ranges_are_whole_batches_cut_from_each_gap():
    assert task_ranges([(0, 10), (14, 19)], batch_size=2, rows=4) == [(0, 4), (4, 8), (8, 10), (14, 18), (18, 19)]
    assert task_ranges([(3, 9)], batch_size=4, rows=6) == [(3, 7), (7, 9)]      # rows rounded down to whole batches


def test_cluster_extraction_is_bit_identical_to_one_process(client, photos, tmp_path):
    local, _, _ = _extract(tmp_path / "local", photos)
    with ClusterExtraction(client, rows_per_task=4) as remote:
        remote_feats, hit, cache = _extract(tmp_path / "cluster", photos, remote)
        assert remote.tasks_run == 6 and not hit
    np.testing.assert_array_equal(remote_feats.vectors, local.vectors)      # NaN row of the corrupt image included
    assert remote_feats.failures == local.failures and remote_feats.failures[0][0] == 13
    [a] = (tmp_path / "local").glob("*.npy")
    [b] = (tmp_path / "cluster").glob("*.npy")
    assert a.name == b.name and a.read_bytes() == b.read_bytes()
    assert not list((tmp_path / "cluster").glob("*.partial"))


def test_a_killed_worker_is_replaced_and_the_result_is_the_same(client, photos, tmp_path):
    local, _, _ = _extract(tmp_path / "local", photos)
    pids = client.run(os.getpid)
    victim = next(iter(pids.values()))
    cache_dir = tmp_path / "cluster"

    def kill_after_the_first_chunk():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            manifests = list(cache_dir.glob("*.partial/manifest.json"))
            if manifests and json.loads(manifests[0].read_text())["chunks"]:
                os.kill(victim, signal.SIGKILL)
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_after_the_first_chunk)
    killer.start()
    with ClusterExtraction(client, rows_per_task=2) as remote:
        feats, _, _ = _extract(cache_dir, photos, remote)
    killer.join()
    assert victim not in client.run(os.getpid).values()                      # it died and was replaced
    np.testing.assert_array_equal(feats.vectors, local.vectors)
    client.wait_for_workers(2, timeout=60)


_DRIVER = """
import sys
from cbir_kit.features import FeatureCache, create_extractor
from cbir_kit.features.distributed import ClusterExtraction
if __name__ == "__main__":
    with ClusterExtraction("local:2", rows_per_task=2) as remote:
        FeatureCache(sys.argv[1], remote=remote).get_or_extract(create_extractor(device="cpu", batch_size=2),
                                                                sys.argv[2:], progress=False)
"""


def test_a_killed_driver_resumes_from_its_finished_chunks(photos, tmp_path, client):
    local, _, _ = _extract(tmp_path / "local", photos)
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    cache_dir = tmp_path / "cluster"
    proc = subprocess.Popen([sys.executable, str(script), str(cache_dir), *photos], start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    done_before = 0
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        manifests = list(cache_dir.glob("*.partial/manifest.json"))
        done_before = len(json.loads(manifests[0].read_text())["chunks"]) if manifests else 0
        if done_before >= 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the driver finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)                     # the driver and its local cluster, at once
    proc.wait(timeout=60)
    with ClusterExtraction(client, rows_per_task=2) as remote:
        feats, hit, _ = _extract(cache_dir, photos, remote)
        assert not hit and remote.tasks_run <= 12 - done_before            # only the chunks not finished before
    np.testing.assert_array_equal(feats.vectors, local.vectors)


def test_a_failing_task_is_an_error_naming_its_images_not_a_hang(client, photos, tmp_path):
    fake = SimpleNamespace(spec="efficientnet_lite0", pretrained=True, device=SimpleNamespace(type="cuda"),
                           batch_size=2, precision="fp32", dim=1280)   # the workers have no CUDA device
    manifest = {"chunks": [], "dim": None}
    remote = ClusterExtraction(client, rows_per_task=4)
    t0 = time.monotonic()
    with pytest.raises(CbirError, match=r"extracting images (0-3|4-7|8-11|12-15|16-19|20-23) \(.*\.jpg \.\.\.\): .*CUDA"):
        remote(tmp_path / "part", manifest, fake, photos, [(0, len(photos))], False, "x")
    assert time.monotonic() - t0 < 120


def test_evaluate_on_the_cluster_gives_the_same_metrics_and_cached_features(photos, tmp_path):
    folder = Path(photos[0]).parents[1]
    one = evaluate(f"folder:{folder}", cache_dir=tmp_path / "one", progress=False, batch_size=2)
    two = evaluate(f"folder:{folder}", cache_dir=tmp_path / "two", progress=False, batch_size=2, cluster="local:2")
    assert one.metrics == two.metrics and one.skipped == two.skipped and not two.cache["hit"]
    assert [p.read_bytes() for p in sorted((tmp_path / "one").glob("*.npy"))] == \
        [p.read_bytes() for p in sorted((tmp_path / "two").glob("*.npy"))]


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF16,PQ8x6", "PCA16,IVF8,Flat"])
def test_an_ivf_index_filled_in_shards_equals_one_built_in_one_process(client, factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[4000] = x[17]                                           # a tie across two shards
    merged = build_sharded(factory, x, client, n_shards=3, nprobe=4)
    single = AnnIndex(factory, nprobe=4).fit(x)
    assert merged.ntotal == single.ntotal == 6000
    assert faiss.serialize_index(merged.index_).tobytes() == faiss.serialize_index(single.index_).tobytes()
    ms, mi = merged.search(x[:100], 20)
    ss, si = single.search(x[:100], 20)
    np.testing.assert_array_equal(mi, si)
    np.testing.assert_array_equal(ms, ss)


def test_two_index_shards_searched_as_one_equal_the_unsharded_index():
    """docs/scale.md: each node holds one shard; a query fans out and the per-shard top k merge by score."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5000, 24)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[3000] = x[2]                                            # tied items on different shards
    queries = x[:50]
    shards = faiss.IndexShards(24, True, True)               # threaded, successive ids (shard 2 starts at 2500)
    halves = [faiss.IndexFlatIP(24), faiss.IndexFlatIP(24)]
    halves[0].add(x[:2500])
    halves[1].add(x[2500:])
    for half in halves:
        shards.add_shard(half)
    k = 10
    s_scores, s_ids = search_ties_at_cut(shards.search, queries, k, 5000)
    e_scores, e_ids = ExactIndex().fit(x).search(queries, k)
    np.testing.assert_array_equal(s_ids, e_ids)
    np.testing.assert_array_equal(s_scores, e_scores)
    assert e_ids[2, :2].tolist() == [2, 3000]                # the tie, lower id first, from two shards


def test_index_build_on_the_cluster_writes_the_same_collection(photos, tmp_path, capsys):
    from cbir_kit.cli import main

    folder = Path(photos[0]).parents[1]
    common = ["index", "build", "--dataset", f"folder:{folder}", "--index", "IVF2,Flat", "--batch-size", "2",
              "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "one"), "--cache", str(tmp_path / "c1")]) == 0
    assert main(common + ["--out", str(tmp_path / "two"), "--cache", str(tmp_path / "c2"), "--cluster", "local:2"]) == 0
    one = json.loads((tmp_path / "one" / "manifest.json").read_text())["files"]
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())["files"]
    assert {k: v["blake2b"] for k, v in one.items()} == {k: v["blake2b"] for k, v in two.items()}


def test_the_scale_benchmark_prints_the_1_vs_2_worker_ratio_measured_in_one_run(photos, tmp_path, capsys):
    from cbir_kit.cli import main

    folder = Path(photos[0]).parents[1]
    assert main(["bench", "scale", "--dataset", f"folder:{folder}", "--students", "0",
                 "--json", str(tmp_path / "scale.json")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "scale.json").read_text())
    row = result["extraction"]
    assert row["images"] == 24 and set(row) >= {"none", "local:1", "local:2", "speedup", "overhead"}
    assert row["speedup"] == pytest.approx(row["local:1"]["seconds"] / row["local:2"]["seconds"])
    assert row["overhead"] == pytest.approx(row["local:1"]["seconds"] / row["none"]["seconds"])
    assert result["autograde"] is None and f"extract 24 {result['dataset']} images" in out and "1 vs 2" in out
