"""Ensembling, arrays in and arrays out: numeric methods (`methods`), the blend pipeline with its nested CV
(`pipeline`), the fitted blend as JSON (`fitted`), the test estimates (`matched`, `confidence`) and
which members a blend takes (`store`).
"""
