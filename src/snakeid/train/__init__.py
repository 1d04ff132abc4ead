"""Two-stage transfer learning on cached frozen features.

Both stages train only the tail of the network: `train_head` the classifier on a frozen backbone,
`finetune` the last `unfreeze_blocks` feature blocks plus the classifier. Everything below the
trainable tail is frozen, so its output for a given image and augmentation is fixed: we compute
it once per image and augmentation view (`data.views` views, float16, memory-mapped in a temp
dir) and train the tail on those features. That removes the backbone forward from every epoch
(the original study's loop) and makes "frozen means frozen" structural: the frozen prefix runs
only in eval mode under `torch.inference_mode`, so neither its weights nor its BatchNorm
running statistics can move. The one exception comes before the cache: `adapt.backbones`
(`snakeid.train.adapt`) fine-tunes whole trunks on live augmented photos first, and the cache
then holds the adapted trunks' features.

Under `torchrun` (see `snakeid.distributed`) the same code runs as N data-parallel ranks: each
rank computes the cached features of its shard of the photos into one shared memmap, trains the
tail wrapped in `DistributedDataParallel` on its shard of every epoch's seeded sample order
(`data.batch_size` stays the global batch: each rank takes batch_size / N), and validates its
shard of the val photos; the logits are gathered so every rank computes the same metrics and
keeps the same best epoch. Only rank 0 writes files.
"""

from snakeid.train.config import (
    METRICS,
    AdaptConfig,
    FinetuneConfig,
    FitSpec,
    LossConfig,
    Setup,
    TrainHeadConfig,
    check_imbalance_options,
    class_weights,
    finetune_settings,
    fit_spec,
    prepare,
    probe_balance,
)
from snakeid.train.features import (
    Caches,
    FeatureCache,
    cache_features,
    load_caches,
    pooled_views,
    view_datasets,
)
from snakeid.train.head import Holdout, train_probe
from snakeid.train.loop import (
    FitResult,
    StageResult,
    fit_tail,
    freeze_all_but,
    lr_factor,
    predict_cached,
    train_tail,
)

__all__ = [
    "METRICS",
    "AdaptConfig",
    "Caches",
    "FeatureCache",
    "FinetuneConfig",
    "FitResult",
    "FitSpec",
    "Holdout",
    "LossConfig",
    "Setup",
    "StageResult",
    "TrainHeadConfig",
    "cache_features",
    "check_imbalance_options",
    "class_weights",
    "finetune_settings",
    "fit_spec",
    "fit_tail",
    "freeze_all_but",
    "load_caches",
    "lr_factor",
    "pooled_views",
    "predict_cached",
    "prepare",
    "probe_balance",
    "train_probe",
    "train_tail",
    "view_datasets",
]
