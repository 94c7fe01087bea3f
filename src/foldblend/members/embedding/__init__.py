"""The embedding member: a head (logistic regression, kNN, linear SVM) fitted per fold on a frozen
pretrained backbone's features, which are extracted once and cached (`members.features`).

`heads` fits the heads and keeps them as plain arrays, `checkpoint` writes and rebuilds a fold's
`head.npz` (backbone spec + head, no pickles), `train` fits and predicts one fold, `kind` is the registered
`MemberKind` (`kind: embedding`).
"""
