"""From input/ to the split: finding the competition (`find`), reading images (`read`), the scan stage
(`scan`: readability, hashes, duplicates (`dedup`), out-of-domain suspects (`ood`), the EDA page
(`eda`)), the folds stage (`folds`), the decode-once image cache (`cache`) and the demo (`demo`)."""
