"""Side branch, training: the metric-learning losses by name, importable without torch (notebook 08).

``LOSSES`` maps a loss name to ``((loss class, arguments), (miner class, arguments))`` of
pytorch-metric-learning; the miner is used after the mining warm-up.  :func:`cbir_kit.train.losses.make_loss`
builds them; the ``cbir`` command lists the names from here without loading torch.
"""

LOSSES: dict[str, tuple[tuple[str, dict], tuple[str, dict]]] = {
    "circle": (("CircleLoss", {"m": 0.4, "gamma": 80}), ("MultiSimilarityMiner", {"epsilon": 0.1})),
    "triplet": (("TripletMarginLoss", {"margin": 0.1}), ("BatchHardMiner", {})),
    "multi_similarity": (("MultiSimilarityLoss", {"alpha": 2, "beta": 50, "base": 0.5}),
                         ("MultiSimilarityMiner", {"epsilon": 0.1})),
    "contrastive": (("ContrastiveLoss", {"pos_margin": 0.0, "neg_margin": 1.0}),
                    ("MultiSimilarityMiner", {"epsilon": 0.1})),
}
