"""Shared fixtures.  Tests never touch the network or the user's own cache/data folders."""
from __future__ import annotations

import os
from pathlib import Path

# idle OpenMP threads sleep in the tests and the notebook kernels they start, as under the cbir command
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
from hypothesis import settings

# property tests draw the same examples on every run: CI never fails on a draw a rerun would not repeat
settings.register_profile("cbir", derandomize=True)
settings.load_profile("cbir")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CBIR_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def isolated_dirs(tmp_path_factory):
    """Point $CBIR_DATA and $CBIR_CACHE at session temp folders (shared by all tests)."""
    base = tmp_path_factory.mktemp("cbir")
    old = {k: os.environ.get(k) for k in ("CBIR_DATA", "CBIR_CACHE")}
    os.environ["CBIR_DATA"] = str(base / "data")
    os.environ["CBIR_CACHE"] = str(base / "cache")
    yield base
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def one_faiss_thread():
    """faiss on one OpenMP thread: k-means training spins badly with several on a busy shared machine."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture
def http_server():
    """A :class:`fixture_server.FixtureServer` on 127.0.0.1, shut down after the test."""
    from fixture_server import FixtureServer
    srv = FixtureServer()
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real Corel-1K and revisitop ground truth); skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set CBIR_SHARED_DATA); "
                    "these tests run in CI where it exists")
    return SHARED_DATA


@pytest.fixture(scope="session")
def corel_csv(shared_data) -> Path:
    path = shared_data / "corel1k" / "labels.csv"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="session")
def demo_dataset():
    from cbir_kit.datasets import load
    return load("demo")


@pytest.fixture(scope="session")
def demo_features(demo_dataset):
    """Real efficientnet_lite0 features of the demo set: (query (Q, D), gallery (G, D), dataset)."""
    from cbir_kit.features import FeatureCache, create_extractor
    ex = create_extractor("efficientnet_lite0", device="cpu")
    cache = FeatureCache()
    g, _ = cache.get_or_extract(ex, demo_dataset.gallery, progress=False)
    q, _ = cache.get_or_extract(ex, demo_dataset.query, progress=False)
    return q.vectors, g.vectors, demo_dataset


@pytest.fixture(scope="session")
def corel_features(corel_csv):
    """Real efficientnet_lite0 features of Corel-1K (100 queries, 900 gallery), cached."""
    from cbir_kit.datasets import load
    from cbir_kit.features import FeatureCache, create_extractor
    ds = load(f"csv:{corel_csv}")
    ex = create_extractor("efficientnet_lite0", device="cpu")
    cache = FeatureCache()
    g, _ = cache.get_or_extract(ex, ds.gallery, progress=False)
    q, _ = cache.get_or_extract(ex, ds.query, progress=False)
    return q.vectors, g.vectors, ds
