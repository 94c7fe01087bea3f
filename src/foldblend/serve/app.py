"""`foldblend serve`: a local web page (Gradio) to try the trained models on your own images.

Drop images or a zip of a folder (or paste one); each gets its top-k classes from exactly the path of
`foldblend predict`, each member's view, and, where frozen-backbone features exist, the most similar
training images. Beside it: the model's CV and per-class OOF F1. The same call is Gradio's HTTP API
(`/classify`).

Uploads never enter the project: Gradio stores them in a private temporary folder (made here, outside
the project, removed when the server stops), and zips unpack into a per-request folder inside it.
Gradio is imported only when the server starts, with its telemetry off; it binds to 127.0.0.1 and
never makes a share link.
"""
from __future__ import annotations

import atexit
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from foldblend.members.infer import resolve_device
from foldblend.safety import remove
from foldblend.serve.model import classify, load_served
from foldblend.serve.page import CSS, card_html, results_html
from foldblend.serve.uploads import UploadLimits, gather_uploads

API_HELP = """\
Every classification on this page is also an HTTP endpoint, `/classify`, returning the JSON shown above.

From Python (`gradio_client` comes with Gradio):

```python
from gradio_client import Client, handle_file

client = Client("{url}")
result = client.predict(files=[handle_file("cat.png"), handle_file("photos.zip")], pasted=None, top_k=3,
                        api_name="/classify")
print([(image["file"], image["predicted"]) for image in result["images"]], result["errors"])
```

With `curl` (upload, start the call, read the result from the event stream's last `data:` line):

```bash
URL={url_no_slash}
FILE=$(curl -s -F "files=@cat.png" $URL/gradio_api/upload | \
python3 -c 'import json,sys; print(json.load(sys.stdin)[0])')
ID=$(curl -s -H 'Content-Type: application/json' \\
     -d "{{\\"data\\": [[{{\\"path\\": \\"$FILE\\", \\"meta\\": \
{{\\"_type\\": \\"gradio.FileData\\"}}}}], null, 3]}}" \\
     $URL/gradio_api/call/classify | python3 -c 'import json,sys; print(json.load(sys.stdin)["event_id"])')
curl -s -N $URL/gradio_api/call/classify/$ID
```
"""


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise RuntimeError(f"cannot listen on {host}:{port} ({e.strerror or e}): another server is probably "
                               f"using it; pass --port") from e


def upload_folder_for(project) -> tuple[Path, bool]:
    """Where Gradio keeps uploads: GRADIO_TEMP_DIR if set (never inside the project), else a fresh
    temporary folder. The flag says whether it is ours to delete at exit."""
    configured = os.environ.get("GRADIO_TEMP_DIR")
    if configured:
        folder = Path(configured).resolve()
        if folder.is_relative_to(project.root):
            raise ValueError(f"GRADIO_TEMP_DIR={configured} is inside the project {project.root}: uploads are never "
                             "written into the project; unset it or point it outside")
        return folder, False
    return Path(tempfile.mkdtemp(prefix="foldblend-serve-")), True


def import_gradio(upload_folder: Path):
    """Gradio, with its telemetry off and its upload cache in `upload_folder` (read when it is imported)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["GRADIO_TEMP_DIR"] = str(upload_folder)
    try:
        import gradio as gr
    except ImportError as e:
        raise RuntimeError("the web app needs Gradio: pip install 'foldblend[serve]' "
                           "(`bash run.sh` installs it into .venv/)") from e
    return gr


def classify_uploads(served, files, pasted, top_k, upload_folder: Path, limits: UploadLimits,
                     html: bool = True) -> tuple[dict, str]:
    """(the API's JSON, the page's HTML or "") for one request. Never raises: a failure is a line in the page."""

    sources = [*(files or []), *([pasted] if pasted else [])]
    empty = {"model": served.exp, "classes": served.predictor.classes, "images": [], "errors": []}
    try:
        with tempfile.TemporaryDirectory(prefix="request-", dir=upload_folder) as work:
            uploads = gather_uploads(sources, Path(work), limits)
            result = classify(served, uploads.paths, uploads.names, int(top_k or 5))
            result["errors"] = uploads.problems + result["errors"]
            return result, results_html(result, dict(zip(uploads.names, uploads.paths)), served.project) if html else ""
    except Exception as e:  # the page shows one line; the console keeps the traceback for whoever runs the server
        traceback.print_exc()
        result = {**empty, "errors": [f"could not classify these files ({type(e).__name__}: {e}); "
                                      "the server's console shows the details"]}
        return result, results_html(result, {})


def build_app(served, upload_folder: Path, limits: UploadLimits = UploadLimits(), top_k: int = 5, url: str = ""):
    """The Gradio Blocks page around `served` (a `served.Served`)."""
    gr = import_gradio(upload_folder)

    n_classes = len(served.predictor.classes)

    # `progress` is filled in by Gradio: it shows predict's tqdm bars (decode, each fold model) in the page
    def run(files: list[str] | None, pasted: str | None, top_k: float, progress=gr.Progress(track_tqdm=True)):
        return classify_uploads(served, files, pasted, top_k, upload_folder, limits)

    def run_api(files: list[str] | None, pasted: str | None, top_k: float):
        return classify_uploads(served, files, pasted, top_k, upload_folder, limits, html=False)[0]

    features = served.features.name if served.features is not None else None
    with gr.Blocks(title=f"foldblend: {served.exp}", analytics_enabled=False, delete_cache=(1800, 3600)) as app:
        gr.Markdown(f"## foldblend · {served.card.headline}")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                files = gr.File(file_count="multiple", label="Images, or a .zip of a folder (drop them here)",
                                elem_id="fb-files")
                pasted = gr.Image(sources=["upload", "clipboard"], type="filepath", label="…or paste one image",
                                  elem_id="fb-paste", height=180)
                shown = gr.Slider(1, max(1, min(10, n_classes)), value=max(1, min(top_k, n_classes)), step=1,
                                  label="classes shown per image", elem_id="fb-topk")
                button = gr.Button("Classify", variant="primary", elem_id="fb-classify")
            with gr.Column(scale=3):
                results = gr.HTML(results_html({"model": served.exp, "images": [], "errors": []}, {}),
                                  elem_id="fb-results")
        with gr.Accordion("About this model: CV, classes, per-class OOF F1", open=False, elem_id="fb-about"):
            gr.HTML(card_html(served.card, features))
        with gr.Accordion("As JSON (what the HTTP API returns)", open=False):
            raw = gr.JSON(elem_id="fb-json")
        with gr.Accordion("Use it from a script (HTTP API)", open=False):
            url = url or "http://127.0.0.1:7860/"
            gr.Markdown(API_HELP.format(url=url, url_no_slash=url.rstrip("/")))
        gr.on([files.change, pasted.change, button.click], run, [files, pasted, shown], [raw, results],
              api_visibility="private")
        # the HTTP API: the same inputs and JSON, without the page's HTML (thumbnails) that scripts do not want
        api_trigger = gr.Button(visible=False)
        api_trigger.click(run_api, [files, pasted, shown], raw, api_name="classify")
    return app


def serve(project, exp: str = "blend", host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          batch_size: int = 64, limits: UploadLimits = UploadLimits(), top_k: int = 5, block: bool = True):
    """Load the models once, then serve the page until Ctrl+C. With block=False, return the running app."""
    start = time.monotonic()
    _check_port_free(host, port)  # before seconds of loading models
    upload_folder, ours = upload_folder_for(project)
    if block and threading.current_thread() is threading.main_thread():
        # `kill` (SIGTERM) ends the server like Ctrl+C, so the upload folder is still removed
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        import_gradio(upload_folder)  # before torch, so a missing extra is said before seconds of loading

        served = load_served(project, exp, resolve_device(device), batch_size)
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
        app = build_app(served, upload_folder, limits, top_k, url)
        for note in served.card.notes:
            print(f"note: {note}")
        try:
            app.launch(server_name=host, server_port=port, share=False, quiet=True, prevent_thread_lock=True,
                       max_file_size=limits.max_bytes, footer_links=["api"], enable_monitoring=False,
                       ssr_mode=False, mcp_server=False, css=CSS)
        except OSError as e:  # taken between the check and now
            raise RuntimeError(f"cannot listen on {host}:{port}: another server is probably using it; "
                               "pass --port") from e
        print(f"serving {served.card.headline} at {url} (ready in {time.monotonic() - start:.1f} s; Ctrl+C stops "
              f"it); uploads stay outside the project and are deleted when it stops", flush=True)
        if not block:  # the caller closes the app; our upload folder goes when the process ends
            if ours:
                atexit.register(remove, upload_folder, upload_folder.parent)
            return app
        try:
            app.block_thread()  # until Ctrl+C (or SIGTERM, above)
        finally:
            app.close(verbose=False)
    finally:
        if ours and block:
            remove(upload_folder, inside=upload_folder.parent)
    return None
