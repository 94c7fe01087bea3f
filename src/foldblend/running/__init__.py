"""Running experiments: one fold of any kind (`fold`), orchestration and pending folds (`experiment`), and
the executors that run fold jobs (`jobs`; `local`: this process or one per device; `ray_executor`).
"""
