"""The network member: a timm backbone (or a built-in small CNN) fine-tuned per fold.

`models` builds and checkpoints the network, `optim` the optimisation pieces (optimizer, schedule,
loss, mixup, EMA), `train` the loop that trains one fold and predicts it, `kind` the registered
`MemberKind` (`kind: cnn`).
"""
