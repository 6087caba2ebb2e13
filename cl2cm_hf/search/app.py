"""The search page: a Gradio app over a `SearchIndex` (Gradio is what Hugging Face Spaces run).

    cl2cm-app INDEX [--port 7860] [--host 127.0.0.1] [--top 12]

A query box (a caption in any language the model was trained on), a grid of the best images with
their score and caption when the index knows it, "more like this" (upload an image, or click a
result), and a line naming the model and index served. The components carry the elem_ids
``#query``, ``#go``, ``#results``, ``#image-query`` and ``#model-info`` (tests/test_search_page.py
drives them in a real browser). Install with ``pip install "cl2cm-hf[app]"``; ``trainer/app.py``
is the same page as a Space file.

The page fetches nothing at run time: Gradio's analytics and version check are off (set before
Gradio is imported) and its default theme ships its fonts.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (after the environment above)
from cl2cm_hf.search.index_build import open_image  # noqa: E402

DEFAULT_TOP_K = 12
EXAMPLE_QUERY = "ein großer roter Hund neben einem Auto"


def model_info(metadata: dict) -> str:
    """One Markdown line: which model (and revision) and which index the page serves."""
    revision = metadata.get("model_revision")
    model = f"`{metadata.get('model', '?')}`" + (f" (revision `{str(revision).split(':')[-1][:12]}`)" if revision else "")
    parts = [f"**Model** {model}", f"**index** {metadata.get('count', '?')} items", f"dim {metadata.get('dim', '?')}",
             f"built {metadata.get('created', '?')}"]
    faiss = metadata.get("faiss")
    if isinstance(faiss, dict) and faiss.get("type"):
        recall = faiss.get("recall@10", faiss.get("recall_at_10"))
        parts.append(f"faiss {faiss['type']}" + (f" (recall@10 {recall:.3f})" if isinstance(recall, float) else ""))
    return " · ".join(parts)


def hit_label(rank: int, hit) -> str:
    """Caption under a result: rank, id, score and, when the index knows it, the item's caption."""
    label = f"{rank}. {hit.id} · {hit.score:.3f}"
    return f"{label} · {hit.caption}" if hit.caption else label


def gallery_value(hits) -> list[tuple[str, str]]:
    """Gallery items ``(image path, label)`` in rank order; hits without a file are left out."""
    return [(str(hit.path), hit_label(rank, hit)) for rank, hit in enumerate(hits, start=1) if hit.path]


def image_folders(index) -> list[str]:
    """Folders holding the index's images: Gradio serves only files in folders it is allowed."""
    return sorted({str(Path(path).resolve().parent) for path in index.paths if path})


def build_app(index, top_k: int = DEFAULT_TOP_K) -> gr.Blocks:
    """The page over `index` (a `cl2cm_hf.search.SearchIndex`: ``metadata``, ``search(text,
    top_k)``, ``search_image(image, top_k)``), showing `top_k` results."""

    def by_text(query: str):
        query = (query or "").strip()
        if not query:
            gr.Warning("Type a caption to search for.")
            return [], []
        hits = index.search(query, top_k=top_k)
        return gallery_value(hits), [str(hit.path) for hit in hits if hit.path]

    def by_image(image):
        if image is None:
            return [], []
        hits = index.search_image(image, top_k=top_k)
        return gallery_value(hits), [str(hit.path) for hit in hits if hit.path]

    def more_like_this(shown: list[str], evt: gr.SelectData):
        image = open_image(shown[evt.index])
        return (image, *by_image(image))

    with gr.Blocks(title="CL2CM search") as page:
        gr.Markdown("## Search images with a caption in any trained language")
        gr.Markdown(model_info(index.metadata), elem_id="model-info")
        with gr.Row():
            query = gr.Textbox(label="Caption", placeholder=EXAMPLE_QUERY, elem_id="query", scale=6, lines=1, max_lines=1)
            go = gr.Button("Search", variant="primary", elem_id="go", scale=1, min_width=100)
        with gr.Row():
            results = gr.Gallery(label="Results: rank. id · score · caption (click one for more like it)",
                                 elem_id="results", columns=3, height="auto", object_fit="contain",
                                 allow_preview=False, scale=4)
            image_query = gr.Image(label="More like this", type="pil", sources=["upload", "clipboard"],
                                   elem_id="image-query", height=240, scale=1, min_width=200)
        shown = gr.State([])  # paths of the results on screen, in order, for "more like this"

        go.click(by_text, query, [results, shown])
        query.submit(by_text, query, [results, shown])
        image_query.upload(by_image, image_query, [results, shown])
        results.select(more_like_this, shown, [image_query, results, shown])
    return page


def serve(index, host: str | None = "127.0.0.1", port: int | None = None, top_k: int = DEFAULT_TOP_K) -> None:
    """Build the page and serve it until interrupted, Gradio allowed to serve the index's images.
    `host`/`port` None: Gradio's variables ``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` (as a Space
    sets them), else 127.0.0.1 and 7860 or the next free port."""
    build_app(index, top_k).launch(server_name=host, server_port=port, allowed_paths=image_folders(index),
                                   ssr_mode=False, footer_links=[])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cl2cm-app", description="Serve the CL2CM search page over an index (cl2cm-index makes one).")
    parser.add_argument("index", help="an index folder written by cl2cm-index")
    parser.add_argument("--port", type=int, default=None, help="default: Gradio's (7860, or the next free one)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--top", type=int, default=DEFAULT_TOP_K, help="results shown per query")
    args = parser.parse_args(argv)

    from cl2cm_hf.search import SearchIndex

    serve(SearchIndex.load(args.index), args.host, args.port, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
