"""Issue 24, item 5: one ``cl2cm-search`` call with a text query imports what a text search needs and no
more: with the index's query encoder not torch, transformers or the checkpoint's code; never `datasets`
(nor the data layer), the index build, the image decoders, gradio, or faiss when ``--exact`` (an HNSW
file is as large as the embeddings); and it prints the hits the library finds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_features_world

from cl2cm_hf.search import SearchIndex, build_index

pytestmark = pytest.mark.slow  # starts processes

REPO = Path(__file__).resolve().parents[1]
ROWS = 30
NOT_NEEDED = ("torch", "transformers", "cl2cm_hf.modeling_cl2cm", "datasets", "gradio", "faiss", "cl2cm_hf.data", "cl2cm_hf.search.index_build", "cl2cm_hf.search.decode",
              "cl2cm_hf.search.decode_video", "cl2cm_hf.search.encode", "cl2cm_hf.training", "cl2cm_hf.evaluation",
              "cl2cm_hf.hub")
# Runs the console script's `main` as `cl2cm-search` does, then lists which of NOT_NEEDED were imported.
PROBE = """
import json, sys
from cl2cm_hf.cli.search import main
status = main(sys.argv[2:])
print(json.dumps({"status": status, "loaded": [m for m in json.loads(sys.argv[1]) if m in sys.modules]}))
"""


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """A features index with a faiss file (flat), so that ``--exact`` has an index to leave unread."""
    root = save_features_world(tmp_path_factory.mktemp("call"), ROWS)
    pytest.importorskip("faiss")
    build_index(root / "model", root / "index", features=root / "store", num_workers=0, faiss="flat", progress=False)
    build_index(root / "model", root / "no_encoder", features=root / "store", num_workers=0, faiss="flat", progress=False,
                query_encoder=False)
    return root / "index"


def _call(*argv: str) -> tuple[dict, list[dict]]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(NOT_NEEDED), *argv, "--json"], capture_output=True,
                          text=True, cwd=REPO, check=True)
    *hits, probe = done.stdout.strip().splitlines()
    return json.loads(probe), json.loads("\n".join(hits))["hits"]


def test_text_search_imports_only_what_it_needs(index):
    probe, hits = _call(str(index), "ein roter Hund", "--top", "5", "--exact")
    assert probe == {"status": 0, "loaded": []}
    expected = SearchIndex.load(index).search("ein roter Hund", 5, exact=True)
    assert hits == [hit.to_dict() for hit in expected]  # the same hits and scores as the library's


def test_search_through_faiss_still_imports_it(index):
    probe, hits = _call(str(index), "ein roter Hund", "--top", "5")
    assert probe["status"] == 0 and probe["loaded"] == ["faiss"]  # the probe sees an import when there is one
    assert len(hits) == 5


def test_without_the_query_encoder_the_checkpoint_answers_the_same(index):
    probe, hits = _call(str(index.parent / "no_encoder"), "ein roter Hund", "--top", "5", "--exact")
    assert probe["status"] == 0 and {"torch", "transformers", "cl2cm_hf.modeling_cl2cm"} <= set(probe["loaded"])
    _, fast = _call(str(index), "ein roter Hund", "--top", "5", "--exact")
    assert [h["id"] for h in hits] == [h["id"] for h in fast]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(hits, fast)) < 1e-6
