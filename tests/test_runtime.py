"""The runtime: built once (by the cbir command or a notebook), handed down instead of six keywords."""
from __future__ import annotations

import pytest

from cbir_kit import evaluate
from cbir_kit.cli.app import build_parser
from cbir_kit.cli.common import runtime_from_args
from cbir_kit.errors import CbirError
from cbir_kit.runtime import RUNTIME_OPTIONS, Runtime, runtime_of


def test_runtime_fields_change_by_keyword_and_unknown_names_are_refused():
    rt = runtime_of(Runtime(seed=3), {"progress": False})
    assert rt == Runtime(seed=3, progress=False)
    with pytest.raises(CbirError, match="unknown option.s. colour; the runtime options are root, cache_dir"):
        Runtime().replace(colour="red")
    assert RUNTIME_OPTIONS == ("root", "cache_dir", "device", "batch_size", "num_workers", "progress", "seed",
                                "cluster")


def test_the_command_builds_the_runtime_from_its_shared_flags(tmp_path):
    args = build_parser().parse_args(["evaluate", "--root", str(tmp_path), "--cache", "c", "--device", "cpu",
                                      "--batch-size", "4", "--workers", "2", "--seed", "7", "--no-progress"])
    assert runtime_from_args(args) == Runtime(root=str(tmp_path), cache_dir="c", device="cpu", batch_size=4,
                                              num_workers=2, progress=False, seed=7)


def test_evaluate_takes_a_runtime_or_its_fields_as_keywords():
    by_keywords = evaluate("demo", k=5, device="cpu", progress=False)
    by_runtime = evaluate("demo", k=5, runtime=Runtime(device="cpu", progress=False))
    assert by_runtime.metrics == by_keywords.metrics and by_runtime.cache["hit"]
    with pytest.raises(CbirError, match="unknown option.s. prgress"):
        evaluate("demo", prgress=False)


def test_the_command_names_its_flags_but_leaves_what_the_user_typed(capsys):
    from cbir_kit.cli import main

    assert main(["compare", "--configs", "k=5,index=HNSW32", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "configuration 'k=5,index=HNSW32': unknown key 'k'" in err and "--k 5" not in err
    from cbir_kit.cli.app import as_flags, option_names

    names = option_names(build_parser()._subparsers._group_actions[0].choices["evaluate"])
    assert as_flags("num_workers=0 must be at least 1; point cache_dir= elsewhere", names) == \
        "--workers 0 must be at least 1; point --cache elsewhere"
    assert as_flags("hierarchy='/x.csv' does not exist", names) == "--hierarchy '/x.csv' does not exist"


def test_train_refuses_a_second_seed():
    from cbir_kit.train import HeadConfig, train

    with pytest.raises(CbirError, match=r"train\(\) takes its seed from config.seed \(0\); got seed=1"):
        train("demo", config=HeadConfig(seed=0), seed=1, progress=False)
