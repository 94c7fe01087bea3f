"""One module per `foldblend <command>`: its arguments (`add_arguments`) and `run(args, project)`.
A stage calls libraries, never another stage (`_args` holds the arguments two stages share).
"""
