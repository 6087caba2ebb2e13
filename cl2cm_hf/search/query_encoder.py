"""An index's text tower exported to ONNX (``<index>/query_encoder/``), so that a text search in a fresh
process, one ``cl2cm-search`` call, runs on onnxruntime and tokenizers: no torch, no transformers, no
checkpoint read or hashed (seconds of imports, against a few milliseconds of encoding).

The build writes it (`export_query_encoder`) with torch's ONNX exporter (``torch.onnx.export``,
dynamo), saves the checkpoint's fast tokenizer with its truncation settings, and checks both on probe
queries against the path it replaces (the processor and `get_text_features` through `encode_texts`):
the same token ids, embeddings within `TOLERANCE`. What fails the check, or a model or tokenizer
the exporter cannot take, leaves no query encoder and the reason in the index metadata; searches then
load the checkpoint as before. `SearchIndex.load` uses it only while the checkpoint's files are those
the index was built with (the same check that lets it skip hashing the weights)."""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from cl2cm_hf.errors import CL2CMError

QUERY_ENCODER_DIR = "query_encoder"
QUERY_MAX_LENGTH = 64  # tokens a text query is truncated to (`SearchIndex`'s default max_length)
MODEL_FILE = "text_model.onnx"  # its weights in text_model.onnx.data
TOKENIZER_FILE = "tokenizer.json"
INFO_FILE = "query_encoder.json"
QUERY_ENCODER_FILES = (MODEL_FILE, f"{MODEL_FILE}.data", TOKENIZER_FILE, INFO_FILE)
FORMAT = "cl2cm-query-encoder/1"
TOLERANCE = 1e-5  # largest |ONNX - eager| embedding value accepted at export (float32 rounding: ~1e-7)
INSTALL_HINT = "pip install 'cl2cm-hf[onnx]'"
# Probes: scripts and lengths a query can have, one past the truncation length.
PROBES = ("a dog runs on the grass", "Ein Mann spielt Gitarre auf der Straße.", "une femme lit un livre", "x", "犬が走る",
          "Zwei Kinder laufen am Strand entlang, während im Hintergrund ein Boot vorbeifährt " * 8)


def export_query_encoder(model, processor, folder: Path, max_length: int) -> dict:
    """Write the query encoder of `model` (its `get_text_features`) and `processor` into `folder`
    (created), checked on `PROBES`. Returns what the index metadata records: ``{"written": True,
    "max_abs_diff", "seconds", ...}``, or ``{"written": False, "reason"}`` with nothing written."""
    started = time.perf_counter()
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401 (torch's dynamo exporter)
    except ImportError as err:
        return {"written": False, "reason": f"{err.name} is not installed ({INSTALL_HINT})"}
    backend = getattr(getattr(processor, "tokenizer", None), "backend_tokenizer", None)
    if backend is None:
        return {"written": False, "reason": "the checkpoint's tokenizer is not a fast (tokenizers) one"}
    tokenizer = processor.tokenizer
    info = {"format": FORMAT, "max_length": int(max_length), "text_prefix": getattr(processor, "text_prefix", ""),
            "truncation_side": getattr(tokenizer, "truncation_side", "right"), "unknown_token_id": tokenizer.unk_token_id,
            "unknown_token": tokenizer.unk_token}
    folder.mkdir(parents=True, exist_ok=True)
    try:
        (folder / TOKENIZER_FILE).write_text(backend.to_str(), encoding="utf-8")
        _export_onnx(model, processor, folder / MODEL_FILE, max_length)
        (folder / INFO_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
        diff = _check_against(QueryEncoder.load(folder), model, processor, max_length)
    except Exception as err:  # the exporter's or onnxruntime's own errors: searches use the checkpoint
        shutil.rmtree(folder)  # this build's own new folder
        return {"written": False, "reason": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500]}
    if not diff <= TOLERANCE:
        shutil.rmtree(folder)  # this build's own new folder
        return {"written": False, "reason": f"ONNX and eager embeddings differ by {diff:.3g} (> {TOLERANCE})"}
    return {"written": True, "dir": QUERY_ENCODER_DIR, "max_abs_diff": diff, "probes": len(PROBES),
            "seconds": round(time.perf_counter() - started, 2)}


def _export_onnx(model, processor, path: Path, max_length: int) -> None:
    import torch

    class TextTower(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    # Two probes of different lengths, padded: the graph keeps the attention mask's path and both dims free.
    example = processor(text=list(PROBES[:2]), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    device = next(model.parameters()).device
    args = (example["input_ids"].to(device), example["attention_mask"].to(device))
    dynamic = {"input_ids": {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC},
               "attention_mask": {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}}
    was_training = model.training
    model.eval()
    exporter_log = logging.getLogger("torch.onnx")  # its notes (skipped torchvision ops, ...) are not the user's business
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(TextTower(model), args, str(path), input_names=["input_ids", "attention_mask"],
                              output_names=["text_embeds"], dynamic_shapes=dynamic, dynamo=True, verbose=False,
                              external_data=True)
    finally:
        model.train(was_training)
        exporter_log.setLevel(level)


def _check_against(encoder: QueryEncoder, model, processor, max_length: int) -> float:
    """Largest |ONNX - eager| over the probes, after checking that the token ids are the processor's."""
    import torch

    from cl2cm_hf.inference import encode_texts

    for probe in PROBES:
        expected = processor(text=[probe], truncation=True, max_length=max_length)["input_ids"][0]
        if encoder.token_ids(probe) != list(expected):
            raise CL2CMError(f"the saved tokenizer gives other token ids than the processor for {probe[:40]!r}")
    with torch.no_grad():
        eager = encode_texts(model.get_text_features, processor, list(PROBES), max_length=max_length,
                             device=next(model.parameters()).device).numpy()
    return float(np.abs(encoder.encode(list(PROBES)) - eager).max())


class QueryEncoder:
    """A loaded query encoder: `encode` texts as the checkpoint's processor and `get_text_features` do."""

    def __init__(self, folder: Path, info: dict, session, tokenizer):
        self.folder, self.info = folder, info
        self.session, self.tokenizer = session, tokenizer
        self.max_length = info["max_length"]
        self.unknown_token_id, self.unknown_token = info.get("unknown_token_id"), info.get("unknown_token")

    @classmethod
    def load(cls, folder: Path) -> QueryEncoder:
        import onnxruntime
        from tokenizers import Tokenizer

        info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
        if info.get("format") != FORMAT:
            raise CL2CMError(f"{folder / INFO_FILE}: format {info.get('format')!r}, expected {FORMAT!r}")
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        tokenizer.no_padding()
        tokenizer.enable_truncation(info["max_length"], direction=info["truncation_side"])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # one query at a time: a thread pool costs more than it gains
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        return cls(folder, info, session, tokenizer)

    def token_ids(self, text: str) -> list[int]:
        """The ids the processor gives `text` (its text prefix, special tokens, truncated to `max_length`)."""
        return self.tokenizer.encode(self.info["text_prefix"] + text).ids

    def word_ids(self, text: str) -> list[int]:
        """The ids of `text`'s own words (no prefix, no special tokens): all unknown means no known word."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32 embeddings, each text on its own (no padding)."""
        rows = []
        for text in texts:
            ids = np.asarray([self.token_ids(text)], dtype=np.int64)
            rows.append(self.session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0])
        return np.concatenate(rows).astype(np.float32, copy=False)
