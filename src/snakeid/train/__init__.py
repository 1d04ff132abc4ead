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

Under `torchrun` (see `snakeid.train.distributed`) the same code runs as N data-parallel ranks: each
rank computes the cached features of its shard of the photos into one shared memmap, trains the
tail wrapped in `DistributedDataParallel` on its shard of every epoch's seeded sample order
(`data.batch_size` stays the global batch: each rank takes batch_size / N), and validates its
shard of the val photos; the logits are gathered so every rank computes the same metrics and
keeps the same best epoch. Only rank 0 writes files.
"""
