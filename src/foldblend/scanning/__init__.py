"""The scan as a whole (`run`): every image read once (`inventory`), the train/test shift check with its
backbone features (`shift_check`, `embeddings`) and the EDA page (`eda`).
"""
