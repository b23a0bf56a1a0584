"""Side branch, training: learn a head on cached frozen features or fine-tune a backbone (notebook 08).

* :mod:`.recipes`      the metric-learning losses by name (torch-free)
* :mod:`.losses`       Circle / triplet / multi-similarity / contrastive (pytorch-metric-learning),
                       hierarchy-derived class targets and the cosine loss
* :mod:`.sampling`     seeded P-K class-balanced batches
* :mod:`.fit`          the training loop (AdamW, warm-up + cosine, mining after warm-up, early stopping)
* :mod:`.run`          the ``cbir train`` job and its held-out protocol
* :mod:`.backbone`     full fine-tuning of a CNN or open_clip ViT (GeM + head, LLRD, AMP)
* :mod:`.finetune`     the ``cbir finetune`` job: augmentations, P-K epochs, early stopping, held-out
                       test; the saved network is the model spec ``finetuned:PATH``

What training produces is applied at query time by the features stage: heads
(:mod:`cbir_kit.features.heads`, :mod:`cbir_kit.features.checkpoint`) and fine-tuned networks
(:mod:`cbir_kit.features.embedding_net`); seeded splits are :mod:`cbir_kit.datasets.splits`;
the hash project's Hamming search is :mod:`cbir_kit.index.hash_search`.  They are re-exported
here for the notebooks.
"""
from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "TrainedHead": "..features.checkpoint", "load_head": "..features.checkpoint", "save_head": "..features.checkpoint",
    "HashHead": "..features.heads", "ProjectionHead": "..features.heads",
    "stratified_split": "..datasets.splits", "pk_batches": ".sampling",
    "FitResult": ".fit", "HeadConfig": ".fit", "fit_head": ".fit",
    "algo2_hash_search": "..index.hash_search", "algo2_search": "..index.hash_search",
    "unpacked_hamming_distances": "..index.hash_search", "hamming_recall_at_k": "..index.hash_search",
    "leave_one_out_shortlist_recall": "..index.hash_search", "shortlist_recall_at_k": "..index.hash_search",
    "class_targets": ".losses", "cosine_target_loss": ".losses", "make_loss": ".losses",
    "LOSSES": ".recipes", "TrainResult": ".run", "train": ".run",
})
