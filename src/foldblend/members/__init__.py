"""Ensemble-member kinds: each turns a fold config, the folds and the images into oof/<exp>/.

Shared by every kind: `transforms` (augmentation, TTA views, batch normalisation), `loaders` (datasets
over the decode-once cache), `infer` (logits per TTA view), `assemble` (fold predictions -> the
member contract). One sub-package per kind: `cnn` (fine-tuned networks), `embedding` (heads on frozen
features, from `features`; weights files and packaged checkpoints in `pretrained`). The interface is in `base`.
"""
