"""The web app (`foldblend serve`): the Gradio page and API (`app`), the model it serves (`model`), its
HTML panels (`page`) and what uploads may be (`uploads`).
"""
