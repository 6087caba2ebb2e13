"""The search page: a Gradio app over a `SearchIndex` (Gradio is what Hugging Face Spaces run).

    cl2cm-app INDEX [--port 7860] [--host 127.0.0.1] [--top 12] [--allow-model-mismatch]

A query box (a caption in any language the model was trained on), a grid of the best images and
video clips (a clip shows its first frame and plays, muted and looped, while the pointer is on it)
with their score and caption when the index knows it, "more like this" (upload an image, or click
a result), and a line naming the model and index served. The components carry the elem_ids
``#query``, ``#go``, ``#results``, ``#image-query`` and ``#model-info`` (tests/test_search_page.py
drives them in a real browser). Install with ``pip install "cl2cm-hf[app]"``; ``trainer/app.py``
is the same page as a Space file.

The page fetches nothing at run time: Gradio's analytics and version check are off (set before
Gradio is imported) and its default theme ships its fonts. It serves nothing but the indexed
pictures and clips: pictures reach Gradio as pixels, clips as copies in a private temporary
folder (`cl2cm_hf.cli.app_clips`), and no folder is allowed to Gradio's file route. Gradio's
own files live in a temporary folder of the server's, removed when it stops.
"""

import argparse
import contextlib
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from cl2cm_hf.blank_text import is_blank
from cl2cm_hf.cli import run_tool
from cl2cm_hf.cli.app_clips import HOVER_PLAY_JS, is_clip, shown_clip
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.search.checks import check_int, int_option, printable
from cl2cm_hf.search.decode import BadImage, open_image
from cl2cm_hf.search.fingerprint import model_display_name

if TYPE_CHECKING:
    import gradio as gr

DEFAULT_TOP_K = 12
EXAMPLE_QUERY = "ein großer roter Hund neben einem Auto"
SHOWN_SIDE = 1024  # a result is shown at most this many pixels wide and high


def model_info(metadata: dict, mismatch: str | None = None) -> str:
    """One Markdown line: which model (by a name a person reads, never a local path; its revision)
    and which index the page serves, and a warning when it searches with another model."""
    revision = metadata.get("model_revision")
    name = metadata.get("model_name") or model_display_name(metadata.get("model", "?"))
    model = f"`{name}`" + (f" (revision `{str(revision).split(':')[-1][:12]}`)" if revision else "")
    parts = [f"**Model** {model}", f"**index** {metadata.get('count', '?')} items", f"dim {metadata.get('dim', '?')}",
             f"built {metadata.get('created', '?')}"]
    faiss = metadata.get("faiss")
    if isinstance(faiss, dict) and faiss.get("type"):
        recall = faiss.get("recall@10", faiss.get("recall_at_10"))
        parts.append(f"faiss {faiss['type']}" + (f" (recall@10 {recall:.3f})" if isinstance(recall, float) else ""))
    line = " · ".join(parts)
    return line + ("\n\n**Warning: this page searches with a model that is not the index's own** (allowed by "
                   "--allow-model-mismatch): results may be meaningless." if mismatch else "")


def hit_label(rank: int, hit) -> str:
    """Caption under a result: rank, id, score and, when the index knows it, the item's caption."""
    label = f"{rank}. {printable(hit.id)} · {hit.score:.3f}"
    return f"{label} · {hit.caption}" if hit.caption else label


def shown_picture(path: str):
    """The indexed picture at `path`, decoded and reduced to `SHOWN_SIDE`: the page hands Gradio
    pixels, never a path, so Gradio serves no file of the user's folders (only its own copies)."""
    image = open_image(path)
    image.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
    return image


def gallery_value(hits) -> tuple[list[tuple], list]:
    """Gallery items ``(picture or clip copy, label)`` in rank order, and the hits shown; hits
    without a readable picture or clip are left out."""
    shown, kept = [], []
    for rank, hit in enumerate(hits, start=1):
        if hit.path:
            try:
                shown.append((shown_clip(hit.path) if is_clip(hit.path) else shown_picture(hit.path), hit_label(rank, hit)))
                kept.append(hit)
            except (BadImage, OSError):
                continue  # changed or removed since the index was built
    return shown, kept


def upload_path(payload) -> str | None:
    """The file Gradio stored an upload in (the event runs without Gradio's preprocessing, which
    would fail with a bare "Error" on a file that is not an image); only a file in Gradio's upload
    folder, whatever path an API caller puts in the payload."""
    from gradio.utils import get_upload_folder

    path = (payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)) if payload else None
    if not path:
        return None
    uploads = Path(get_upload_folder()).resolve()
    return str(path) if uploads in Path(path).resolve().parents else None


def build_app(index, top_k: int = DEFAULT_TOP_K) -> "gr.Blocks":
    """The page over `index` (a `cl2cm_hf.search.SearchIndex`: ``metadata``, ``search(text,
    top_k)``, ``search_image(image, top_k)``), showing `top_k` results. A query the index refuses
    (blank, no known word, an upload that is not an image) clears the results and says why."""
    import gradio as gr  # here, not at the top: its temporary folders are fixed when it is imported

    top_k = min(check_int("top_k", top_k), max(len(index), 1))

    def refuse(message: str):
        gr.Warning(message)
        return [], []

    def shown(hits):
        value, kept = gallery_value(hits)
        return value, [(hit.id, str(hit.path)) for hit in kept]

    def by_text(query: str):
        if is_blank(query or ""):
            return refuse("Type a caption to search for.")
        try:
            return shown(index.search(query, top_k=top_k))
        except ValueError as err:
            return refuse(str(err))

    def by_picture(image):
        try:
            return shown(index.search_image(image, top_k=top_k))
        except ValueError as err:
            return refuse(str(err))

    def by_upload(payload):
        path = upload_path(payload)
        if not path:
            return [], []
        try:
            image = open_image(path)  # the reason, not the server's temporary path
        except BadImage as err:
            return refuse(f"Cannot search with this picture: {err}")
        return by_picture(image)

    def more_like_this(shown_items: list[tuple[str, str]], evt: gr.SelectData):
        item_id, path = shown_items[evt.index]
        if is_clip(path) or getattr(index.processor, "image_processor", None) is None:
            try:  # a clip, or a model that reads features: the item's own embedding from the index
                return (None, *shown(index.search_item(item_id, top_k=top_k)))
            except ValueError as err:
                return (None, *refuse(str(err)))
        try:
            image = open_image(path)
        except BadImage as err:
            return (None, *refuse(f"Cannot read this result's picture: {err}"))
        return (image, *by_picture(image))

    with gr.Blocks(title="CL2CM search") as page:
        gr.Markdown("## Search images and videos with a caption in any trained language")
        gr.Markdown(model_info(index.metadata, getattr(index, "model_mismatch", None)), elem_id="model-info")
        with gr.Row():
            query = gr.Textbox(label="Caption", placeholder=EXAMPLE_QUERY, elem_id="query", scale=6, lines=1, max_lines=1)
            go = gr.Button("Search", variant="primary", elem_id="go", scale=1, min_width=100)
        with gr.Row():
            results = gr.Gallery(label="Results: rank. id · score · caption (click one for more like it)",
                                 elem_id="results", columns=3, height="auto", object_fit="contain",
                                 allow_preview=False, scale=4)
            image_query = gr.Image(label="More like this", type="pil", sources=["upload", "clipboard"],
                                   elem_id="image-query", height=240, scale=1, min_width=200)
        shown_paths = gr.State([])  # (id, path) of the results on screen, in order, for "more like this"

        go.click(by_text, query, [results, shown_paths])
        query.submit(by_text, query, [results, shown_paths])
        image_query.upload(by_upload, image_query, [results, shown_paths], preprocess=False)
        results.select(more_like_this, shown_paths, [image_query, results, shown_paths])
    return page


def serve(index, host: str | None = "127.0.0.1", port: int | None = None, top_k: int = DEFAULT_TOP_K) -> None:
    """Build the page and serve it until interrupted. No folder is allowed to Gradio: results are
    handed over as pixels (`shown_picture`), and Gradio's own files (its copies of results and
    uploads) live in a private temporary folder unless ``GRADIO_TEMP_DIR`` names one.
    `host`/`port` None: Gradio's variables ``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` (as a Space
    sets them), else 127.0.0.1 and 7860 or the next free port."""
    with private_gradio_temp():
        build_app(index, top_k).launch(server_name=host, server_port=port, ssr_mode=False, footer_links=[], js=HOVER_PLAY_JS)


@contextlib.contextmanager
def private_gradio_temp():
    """Gradio's files in a temporary folder of this server's own, removed when it stops (Ctrl-C or a
    SIGTERM, which Gradio's blocking loop sees as a KeyboardInterrupt); a ``GRADIO_TEMP_DIR`` the
    user set is used as it is and left alone."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        yield os.environ["GRADIO_TEMP_DIR"]
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with tempfile.TemporaryDirectory(prefix="cl2cm-app-") as folder:
            os.environ["GRADIO_TEMP_DIR"] = folder
            try:
                yield folder
            finally:
                del os.environ["GRADIO_TEMP_DIR"]
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cl2cm-app", description="Serve the CL2CM search page over an index (cl2cm-index makes one).")
    parser.add_argument("index", help="an index folder written by cl2cm-index")
    parser.add_argument("--port", type=int_option("port"), default=None, help="default: Gradio's (7860, or the next free one)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--top", type=int_option("top_k"), default=None,
                        help=f"results shown per query (default {DEFAULT_TOP_K}, or every item of a smaller index)")
    parser.add_argument("--allow-model-mismatch", action="store_true",
                        help="serve although the index's checkpoint changed since the build (the page shows a warning)")
    args = parser.parse_args(argv)
    if not args.host.strip():
        parser.error("--host is empty; give a host name or address (127.0.0.1, 0.0.0.0)")

    from cl2cm_hf.search import SearchIndex

    def run():
        index = SearchIndex.load(args.index, allow_model_mismatch=args.allow_model_mismatch)
        if args.top is not None and len(index) and args.top > len(index):
            raise CL2CMError(f"--top {args.top} is more than the {len(index)} items of the index {args.index}")
        if index.model_mismatch:
            print(f"cl2cm-app: warning: {printable(index.model_mismatch)}", file=sys.stderr)
        serve(index, args.host, args.port, DEFAULT_TOP_K if args.top is None else args.top)

    return run_tool("cl2cm-app", run)


if __name__ == "__main__":
    sys.exit(main())
