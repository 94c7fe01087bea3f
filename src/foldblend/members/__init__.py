"""Ensemble-member kinds: each turns a fold config, the folds and the images into fold predictions.

A kind is one folder and one registered class (`base.MemberKind`, registered by name with
`registry.register_kind`): it trains a fold and returns its predictions (`base.FoldResult`), loads a
fold model for inference, says what goes into a bundle and how to rebuild it, times itself for the init
probe and costs a run, and checks its config keys. Everything else sees kinds only through
`registry.get_kind(cfg.kind)`: `running.fold.run_fold` writes every kind's preds.npz, time.json and
done.json, and `assemble` turns the folds' predictions into `oof/<exp>/`.

Shared by every kind: `transforms` (augmentation, TTA views, batch normalisation), `loaders` (datasets
over the decode-once cache), `infer` (logits per TTA view), `signatures` (when a fold is done),
`timing` (what the init probe measures), `assemble` (fold predictions -> the member contract). One
sub-package per built-in kind: `cnn` (fine-tuned networks), `embedding` (heads on frozen features,
from `features`; weights files and packaged checkpoints in `pretrained`).
"""
