"""Fine-tuning: heads on cached frozen features (CPU) and full backbone fine-tuning (GPU).

* :mod:`.heads`        projection head and the binary-hash project's hash head
* :mod:`.losses`       Circle / triplet / multi-similarity / contrastive (pytorch-metric-learning),
                       hierarchy-derived class targets and the cosine loss
* :mod:`.data`         seeded per-class splits and P-K class-balanced batches
* :mod:`.fit`          the training loop (AdamW, warm-up + cosine, mining after warm-up, early stopping)
* :mod:`.hash_retrieval`  Hamming distances, "Algo 2", "Algo 2 + hashes"
* :mod:`.checkpoint`   one-file heads and applying them at evaluation time
* :mod:`.run`          the ``cbir train`` job and its held-out protocol
* :mod:`.backbone`     full fine-tuning of a CNN or open_clip ViT (GeM + head, LLRD, AMP)
* :mod:`.finetune`     the ``cbir finetune`` job: augmentations, P-K epochs, early stopping, held-out
                       test; the saved network is the model spec ``finetuned:PATH``
"""
from .checkpoint import TrainedHead, load_head, save_head
from .data import pk_batches, stratified_split
from .fit import FitResult, HeadConfig, fit_head
from .hash_retrieval import (algo2_hash_search, algo2_search, hamming_distances, hamming_recall_at_k,
                             leave_one_out_shortlist_recall, shortlist_recall_at_k)
from .heads import HashHead, ProjectionHead
from .losses import LOSSES, class_targets, cosine_target_loss, make_loss
from .run import TrainResult, train

__all__ = ["FitResult", "HashHead", "HeadConfig", "LOSSES", "ProjectionHead", "TrainResult", "TrainedHead",
           "algo2_hash_search", "algo2_search", "class_targets", "cosine_target_loss", "fit_head",
           "hamming_distances", "hamming_recall_at_k", "leave_one_out_shortlist_recall", "load_head", "make_loss",
           "pk_batches", "save_head", "shortlist_recall_at_k", "stratified_split", "train"]
