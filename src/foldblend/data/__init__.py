"""From input/ to the split: the competition (`find`, `files`, `competition_config`), images (`read`), class
order (`classes`), duplicates (`dedup`), semantic and user groups (`semantic`, `groups`), out-of-domain
scores (`ood`), shift arrays (`shift`, `neighbours`), the split (`split`), input freshness
(`freshness`), strict CSVs (`tables`), the decode-once image cache (`cache`) and the demo (`demo`).
"""
