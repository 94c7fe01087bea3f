"""Ensembling: the numeric methods on arrays (`methods`) and the blend stage with its nested CV (`blend`)."""
