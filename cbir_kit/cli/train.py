"""The ``cbir train`` (a head on cached frozen features) and ``cbir finetune`` (the whole backbone) commands."""
from __future__ import annotations

from ..train.recipes import LOSSES
from .common import add_common, runtime_from_args


def _report(result, json_path, write_result_json) -> int:
    print(result.table())
    if json_path:
        write_result_json(result, json_path)
        print(f"wrote {json_path}")
    return 0


def run_train(args) -> int:
    from ..train.fit import HeadConfig
    from ..datasets.manifest import read_hierarchy
    from ..train.run import train, write_result_json

    config = HeadConfig(kind=args.head_kind, loss=args.loss, out_dim=args.dim, dropout=args.dropout,
                        n_bits=args.bits, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                        warmup_frac=args.warmup, mining_warmup=args.mining_warmup, p=args.p, k=args.per_class,
                        patience=args.patience, seed=args.seed)
    hierarchy = read_hierarchy(args.hierarchy) if args.hierarchy else None
    result = train(dataset=args.dataset, model=args.model, config=config, out=args.out, curve=args.curve,
                   plot=not args.no_plot, train_fraction=args.train_fraction, val_fraction=args.val_fraction,
                   hierarchy=hierarchy, k=args.k, runtime=runtime_from_args(args))
    return _report(result, args.json, write_result_json)


def run_finetune(args) -> int:
    from ..train.backbone import FinetuneConfig
    from ..train.finetune import finetune, write_result_json

    config = FinetuneConfig(loss=args.loss, lr=args.lr, head_lr_scale=args.head_lr_scale,
                            layer_decay=args.layer_decay, weight_decay=args.weight_decay, warmup_frac=args.warmup,
                            accumulation=args.accumulation, clip_norm=args.clip_norm, amp=not args.no_amp)
    result = finetune(dataset=args.dataset, model=args.model, config=config, out=args.out, curve=args.curve,
                      plot=not args.no_plot, epochs=args.epochs, p=args.p, k=args.per_class,
                      mining_warmup=args.mining_warmup, patience=args.patience, out_dim=args.dim,
                      dropout=args.dropout, train_fraction=args.train_fraction, val_fraction=args.val_fraction,
                      pretrained=not args.random_weights, top_k=args.k,
                      runtime=runtime_from_args(args))
    return _report(result, args.json, write_result_json)


def _add_training_options(p, what: str, out: str, epochs: int, mining_warmup: int, patience: int) -> None:
    """The options ``cbir train`` and ``cbir finetune`` share: output, loss, batches, split, top-k."""
    add_common(p)
    p.add_argument("--out", default=out, help=f"where to save the {what} (default: {out})")
    p.add_argument("--curve", default=None, help="loss-curve PNG (default: OUT with suffix .png)")
    p.add_argument("--no-plot", action="store_true", help="do not write the loss-curve PNG")
    p.add_argument("--json", default=None, metavar="PATH", help="write the run's result as JSON")
    p.add_argument("--loss", default="circle", choices=sorted(LOSSES), help="metric-learning loss (default: circle)")
    p.add_argument("--dim", type=int, default=512, help="embedding dimension (default: 512)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout before the head's output (default: 0.1)")
    p.add_argument("--epochs", type=int, default=epochs, help=f"most epochs; early stopping may end sooner "
                                                              f"(default: {epochs})")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default: 0.05)")
    p.add_argument("--warmup", type=float, default=0.15, help="share of steps for the LR warm-up (default: 0.15)")
    p.add_argument("--mining-warmup", type=int, default=mining_warmup,
                   help=f"epochs before mining starts (default: {mining_warmup})")
    p.add_argument("--p", type=int, default=32, help="classes per batch (default: 32, capped)")
    p.add_argument("--per-class", type=int, default=4, help="images per class in a batch, K (default: 4)")
    p.add_argument("--patience", type=int, default=patience,
                   help=f"early-stopping patience in epochs (default: {patience})")
    p.add_argument("--train-fraction", type=float, default=0.5,
                   help="share of each class's gallery images used for training (default: 0.5)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of the training images kept for validation (default: 0.2)")
    p.add_argument("--k", type=int, default=10, help="results per query for the top-k metrics (default: 10)")


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a projection or hash head on cached frozen features",
                       description="Protocol: the gallery is split per class (seeded) into training and "
                                   "held-out images; the head is trained on the training part (with a "
                                   "validation split for early stopping) and every query is evaluated "
                                   "against the held-out gallery only, with the frozen features and with "
                                   "the head. `cbir evaluate --head OUT` applies the same hold-out.")
    _add_training_options(p, "trained head", "head.pt", epochs=30, mining_warmup=4, patience=6)
    p.add_argument("--head-kind", default="projection", choices=["projection", "hash"],
                   help="projection: linear, BatchNorm, dropout, L2; hash: the binary-hash project's sigmoid "
                        "hash layer (default: projection)")
    p.add_argument("--bits", type=int, default=48, help="hash layer bits (default: 48)")
    p.add_argument("--hierarchy", default=None, metavar="CSV",
                   help="fine,coarse class hierarchy for the hash head's targets and mAHP@k")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 1e-3 for a projection head, 3e-3 for a hash head)")
    p.set_defaults(func=run_train)


def add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a whole backbone (GeM + head) on images; meant for a GPU",
                       description="Full fine-tuning with the CLIP-retrieval project's recipe (augmentations, "
                                   "P-K batches, metric-learning loss, layer-wise LR decay, AMP on CUDA, "
                                   "accumulation, clipping), under the same held-out protocol as `cbir train`. "
                                   "The network is saved to OUT; `cbir evaluate --model finetuned:OUT` "
                                   "reproduces the test numbers. On a CPU expect minutes per epoch.")
    _add_training_options(p, "network", "finetuned.pt", epochs=10, mining_warmup=1, patience=3)
    p.add_argument("--lr", type=float, default=1e-4,
                   help="peak learning rate lr: trunk block b of L trains with lr x decay^(L - b), GeM and the "
                        "head with lr x head-lr-scale (default: 1e-4)")
    p.add_argument("--head-lr-scale", type=float, default=10.0,
                   help="learning-rate factor of the untrained GeM and head over the trunk's peak (default: 10)")
    p.add_argument("--layer-decay", type=float, default=0.65,
                   help="learning-rate factor per trunk block, from the head down (default: 0.65)")
    p.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimiser step (default: 1)")
    p.add_argument("--clip-norm", type=float, default=1.0, help="gradient-norm clipping (default: 1.0)")
    p.add_argument("--no-amp", action="store_true", help="train in float32 on CUDA too")
    p.add_argument("--random-weights", action="store_true",
                   help="start from random weights instead of the pretrained ones (no download; for tests)")
    p.set_defaults(func=run_finetune)
