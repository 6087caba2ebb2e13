"""Search a saved gallery with one caption, using only the checkpoint (its own shipped code).

    python trainer/query.py RUN/cross_modal "ein roter Hund neben einem Auto" --gallery RUN/cross_modal/test_gallery

Runs without cl2cm_hf: it blocks that import, so the model is loaded by
`AutoModel.from_pretrained(folder, trust_remote_code=True)` from the code inside the folder.
"""

import argparse
import json
import sys

sys.modules["cl2cm_hf"] = None  # prove the checkpoint carries its own code

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("query")
    parser.add_argument("--gallery", required=True, help="feature store folder: features.safetensors (+ lengths), ids.json")
    parser.add_argument("--captions", help="json {visual_id: caption} shown next to each hit")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()

    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    tensors = load_file(f"{args.gallery}/features.safetensors")
    ids = json.load(open(f"{args.gallery}/ids.json", encoding="utf-8"))
    ids = ids["ids"] if isinstance(ids, dict) else ids
    captions = json.load(open(args.captions, encoding="utf-8")) if args.captions else {}
    features, lengths = tensors["features"].float(), tensors.get("lengths")
    mask = None if lengths is None else (torch.arange(features.shape[1]) < lengths[:, None]).long()
    with torch.no_grad():
        text = tokenizer([model.config.text_prefix + args.query], return_tensors="pt")
        query = model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        gallery = model.get_visual_features(visual_features=features, visual_mask=mask)
    scores, top = (query @ gallery.T)[0].topk(min(args.top, len(ids)))
    print(f"query: {args.query!r}  (model code: {type(model).__module__})")
    for rank, (score, index) in enumerate(zip(scores.tolist(), top.tolist()), start=1):
        print(f"  {rank}. {ids[index]}  score {score:.3f}  {captions.get(ids[index], '')}")


if __name__ == "__main__":
    main()
