"""Section `encode`: text embedding throughput of `encode_texts`, length-sorted against
fixed-padding batches (same embeddings asserted)."""

from __future__ import annotations

import gzip

import numpy as np
import torch

from benchmarks.provenance import REPO
from benchmarks.speed_bench.timing import interleaved, med, median_ratio, row

SHARED = REPO.parent / "shared"


def _multi30k_captions(limit: int) -> list[str] | None:
    path = SHARED / "data" / "multi30k" / "task1" / "raw" / "train.de.gz"
    if not path.exists():
        return None
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [line.strip() for _, line in zip(range(limit), handle) if line.strip()]


def bench_encode(args) -> None:
    from transformers import BertConfig, BertTokenizerFast

    from cl2cm_hf import CL2CMCrossModalConfig, CL2CMCrossModalModel
    from cl2cm_hf.data import build_demo_world, train_demo_tokenizer
    from cl2cm_hf.inference import as_processor, encode_texts

    count = 1000 if args.quick else 5000
    cases = []
    world = build_demo_world(seed=0, num_items=1500)
    demo_tok = train_demo_tokenizer(world.tokenizer_corpus(), vocab_size=1500)
    demo_texts = list(world.pairs["train"]["target_text"])[:count]
    cases.append(("demo world captions, demo tokenizer, max_length 40", demo_tok, demo_texts, 40))
    captions = _multi30k_captions(count)
    mbert = SHARED / "tokenizers" / "bert-base-multilingual-cased"
    if captions is not None and mbert.is_dir():
        tokenizer = BertTokenizerFast(tokenizer_file=str(mbert / "tokenizer.json"), vocab_file=str(mbert / "vocab.txt"),
                                      do_lower_case=False)
        cases.append(("Multi30K German captions, mBERT tokenizer, max_length 64", tokenizer, captions, 64))
    else:
        print("  [encode] ../shared is absent: no Multi30K row")
    for name, tokenizer, texts, max_length in cases:
        torch.manual_seed(0)
        text = BertConfig(vocab_size=len(tokenizer), hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=384, max_position_embeddings=max(64, max_length + 2)).to_dict()
        model = CL2CMCrossModalModel(CL2CMCrossModalConfig(text_config=text, projection_dim=64, visual_feature_dim=64)).eval()

        def encoder(sort):
            return lambda: encode_texts(model.get_text_features, as_processor(tokenizer), texts, batch_size=256,
                                        max_length=max_length, sort_by_length=sort)

        sorted_out, fixed_out = encoder(True)(), encoder(False)()  # also the warm-up
        assert torch.allclose(sorted_out, fixed_out, atol=1e-4), float((sorted_out - fixed_out).abs().max())
        times = interleaved({"sorted": encoder(True), "fixed": encoder(False)}, repeats=min(args.repeats, 3), warmup=0)
        speedup = median_ratio(times["fixed"], times["sorted"])
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
        row("encode", f"encode_texts, {len(texts):,} {name} (text tower 96x2, batch 256)",
            f"{len(texts) / med(times['sorted']):,.0f} texts/s", f"fixed padding {len(texts) / med(times['fixed']):,.0f} texts/s",
            speedup, None, None, args.threads, f"mean length {np.mean(lengths):.1f} tokens of {max_length}; same embeddings")
