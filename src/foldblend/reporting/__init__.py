"""Figures and panels shared by the report, evaluate and the web app: plots (`plots`), what oof/ holds for
them (`sources`) and the nearest-training-images panel (`nearest_panel`).
"""
