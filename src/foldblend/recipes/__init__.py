"""Fold configs written for the data and the machine (`foldblend init`): what to train, at what size,
for how long, and what fits a time budget."""
