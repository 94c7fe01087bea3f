"""foldblend: k-fold training, out-of-fold predictions, TTA, ensembling and submissions for image competitions."""

__version__ = "0.1.0"
