"""What `foldblend init` chooses from and how: the data and the machine (`profile`), the candidate members
(`presets`), the timed probe (`probe`) and the time budget (`budget`).
"""
