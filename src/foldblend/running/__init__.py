"""Running experiments: which folds are pending (`signatures`), orchestration (`experiment`) and the
executors that run fold jobs (`local`: in this process, or one process per device)."""
