"""Model cards (template, metadata, plot, usage snippet) and the push of a checkpoint.

The push goes through a fake `HfApi` that writes the Hub cache layout
(``$HF_HOME/hub/models--org--name/{refs/main, snapshots/<sha>/...}``); a fresh interpreter with
``HF_HUB_OFFLINE=1`` and without cl2cm_hf then loads the model and its card by repo id. A real push
runs only when HF_TOKEN is set.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from huggingface_hub import CommitInfo, EvalResult, ModelCard

from cl2cm_hf import CL2CMCrossModalConfig, CL2CMCrossModalModel
from cl2cm_hf.evaluation.records import MetricRecord, records_from_metrics
from cl2cm_hf.hub import (
    PLOT_FILENAME,
    CheckpointError,
    build_card,
    eval_results,
    metrics_table,
    push_checkpoint,
    stage_checkpoint,
    update_card_results,
    usage_snippet,
)
from cl2cm_hf.retrieval import RetrievalRanks, metrics_from_ranks

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRAINING_CONFIG = {
    "dataset": "multi30k",
    "stage": "both",
    "target_langs": ["de", "fr"],
    "text_model": "intfloat/multilingual-e5-small",
    "lambda_word": 0.1,
    "lambda_mt": 1.0,
    "lambda_kt": 0.5,
    "kt_temperature": 1.0,
    "logit_scale_init_value": 2.9957,
    "num_train_epochs": 2,
}


class FakeHubApi:
    """`create_repo` / `create_branch` / `upload_folder` of HfApi, writing the local Hub cache."""

    def __init__(self, hf_home: Path):
        self.hub = Path(hf_home) / "hub"
        self.calls = []

    def _repo(self, repo_id: str) -> Path:
        return self.hub / ("models--" + repo_id.replace("/", "--"))

    def create_repo(self, repo_id, *, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        if self._repo(repo_id).exists() and not exist_ok:
            raise FileExistsError(repo_id)
        self._repo(repo_id).mkdir(parents=True, exist_ok=True)
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, *, branch, exist_ok=False, **kwargs):
        self.calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, *, folder_path, repo_id, revision=None, commit_message=None, **kwargs):
        self.calls.append(("upload_folder", repo_id, revision, commit_message, sorted(os.listdir(folder_path))))
        digest = hashlib.sha1()
        for name in sorted(os.listdir(folder_path)):
            digest.update(name.encode() + (Path(folder_path) / name).read_bytes())
        sha = digest.hexdigest()  # a fake 40-hex commit id
        snapshot = self._repo(repo_id) / "snapshots" / sha
        shutil.copytree(folder_path, snapshot, dirs_exist_ok=True)
        (self._repo(repo_id) / "refs").mkdir(exist_ok=True)
        (self._repo(repo_id) / "refs" / (revision or "main")).write_text(sha)
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{sha}", commit_message=commit_message,
                          commit_description="", oid=sha)


def make_checkpoint(folder: Path, backbone: bool = False, **config_kwargs) -> Path:
    """A tiny CL2CM model (precomputed features, or a tiny CLIP vision backbone) with its processor
    (a BERT tokenizer, the text prefix, a CLIP image processor for the backbone), saved like a
    training run's output."""
    from transformers import BertConfig, BertTokenizer, CLIPImageProcessor, CLIPVisionConfig

    from cl2cm_hf.processing_cl2cm import build_processor

    words = "ein hund rennt über eine wiese . zwei kinder spielen am strand query :".split()
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)}
    text_config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=64)
    if backbone:
        vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=32, patch_size=16)
        config_kwargs.update(visual_encoder_type="backbone", vision_config=vision.to_dict())
    config = CL2CMCrossModalConfig(text_config=text_config.to_dict(), projection_dim=8, visual_feature_dim=12,
                                   visual_hidden_size=16, text_prefix="query: ", **config_kwargs)
    CL2CMCrossModalModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}) if backbone else None
    build_processor(BertTokenizer(vocab=vocab), config.text_prefix, image_processor).save_pretrained(folder)
    (folder / "training_config.yaml").write_text(yaml.safe_dump(TRAINING_CONFIG, sort_keys=False))
    (folder / "optimizer.pt").write_bytes(b"not published")
    (folder / "test_gallery").mkdir()
    (folder / "test_gallery" / "features.npy").write_bytes(b"stays local")
    return folder


def records_for(lang: str, t2v, v2t, dataset="multi30k"):
    return records_from_metrics(metrics_from_ranks(t2v, v2t), dataset=dataset, split="test", lang=lang)


@pytest.fixture(scope="module")
def ranks():
    rng = np.random.default_rng(0)
    return {lang: RetrievalRanks(rng.integers(1, 30, 200), rng.integers(1, 12, 40), np.arange(40)) for lang in ("de", "fr")}


@pytest.fixture(scope="module")
def carded(tmp_path_factory, ranks):
    folder = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "cl2cm-tiny")
    records = [record for lang, r in ranks.items() for record in records_for(lang, r.t2v, r.v2t)]
    build_card(folder, records, ranks=ranks, repo_id="org/cl2cm-tiny", visual_modality="image")
    return folder, records


def test_card_has_metadata_model_index_and_plot(carded, ranks):
    folder, records = carded
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n", 2)[1])
    assert header["library_name"] == "transformers" and header["pipeline_tag"] == "feature-extraction"
    assert set(header["tags"]) >= {"custom_code", "cross-lingual", "cross-modal-retrieval", "cl2cm"}
    assert header["language"] == ["en", "de", "fr"] and header["datasets"] == ["multi30k"]
    assert header["base_model"] == ["intfloat/multilingual-e5-small"] and header["license"] == "apache-2.0"
    assert header["model-index"][0]["name"] == "cl2cm-tiny"
    card = ModelCard.load(folder / "README.md")
    assert card.data.eval_results == eval_results(records, "image")
    assert {r.task_type for r in card.data.eval_results} == {
        "text-to-image-retrieval", "image-to-text-retrieval", "image-text-retrieval"}
    # the plot, linked and a valid PNG
    assert f"]({PLOT_FILENAME})" in text
    png = (folder / PLOT_FILENAME).read_bytes()
    assert png.startswith(PNG_MAGIC) and png[12:16] == b"IHDR"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 100 and height > 100
    import matplotlib.image

    assert matplotlib.image.imread(folder / PLOT_FILENAME).shape[:2] == (height, width)
    # body: the table, the recipe, limitations, and no temporary files left behind
    de_r1 = metrics_from_ranks(ranks["de"].t2v, ranks["de"].v2t)["t2v_r1"]
    assert re.search(rf"\| multi30k \| test \| de \| {de_r1:.1f} \|", text)
    assert metrics_table(records) in text  # the one table writer
    assert "lambda_kt: 0.5" in text and "`lambda_kt` = 0.5" in text and "temperature 0.05" in text
    assert "same feature extractor" in text and "Machine-translation noise" in text
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_usage_snippet_follows_the_config():
    features = {"visual_encoder_type": "features", "visual_feature_dim": 2048, "text_prefix": "query: "}
    code, note = usage_snippet(features, "org/x", ["en", "de"])
    assert 'repo_id = "org/x"' in code and "torch.randn(3, 2048)" in code and '"Ein Hund' in code
    assert "query: " not in code  # the processor adds the prefix
    assert "AutoProcessor.from_pretrained(repo_id, trust_remote_code=True)" in code and "feature extractor" in note
    video = dict(features, visual_num_layers=2, visual_max_frames=4)
    code, _ = usage_snippet(video, "org/x", ["fr"])
    assert "torch.randn(3, 4, 2048)" in code and "visual_mask" in code and "Un chien" in code
    backbone = {"visual_encoder_type": "backbone", "vision_config": {"model_type": "clip_vision_model", "image_size": 224, "num_channels": 3}}
    code, note = usage_snippet(backbone, "org/x", [])
    assert "processor(images=images" in code and "(224, 224)" in code and "clip_vision_model" in note
    compile(code, "<snippet>", "exec")


def test_eval_results_name_direction_modality_and_metric():
    records = [
        MetricRecord("multi30k", "test", "de", "t2v", "r1", 50),
        MetricRecord("vatex", "test", "zh", "v2t", "r5", 70.5),
        MetricRecord("vatex", "test", "zh", None, "sumr", 300),
        MetricRecord("multi30k", "test", "de", "t2v", "medr", 2),
    ]
    results = eval_results(records[:1] + records[3:], "image") + eval_results(records[1:3], "video")
    assert [r.task_type for r in results] == [
        "text-to-image-retrieval", "text-to-image-retrieval", "video-to-text-retrieval", "video-text-retrieval"]
    assert [r.metric_type for r in results] == ["recall@1", "median_rank", "recall@5", "sum_of_recalls"]
    assert results[0].dataset_config == "de" and results[0].metric_value == 50.0 and results[0].dataset_split == "test"
    assert results[0].metric_name == "T2V R@1 (de)"
    # nothing is guessed from names: without a modality the task says "visual"
    assert eval_results(records[1:2], None)[0].task_type == "visual-to-text-retrieval"
    with pytest.raises(ValueError, match="visual_modality"):
        eval_results(records[:1], "audio")
    row = records[0].to_json()
    for bad, match in [({"metric": "bleu"}, "unknown retrieval metric"), ({"direction": "up"}, "direction"),
                       ({"direction": None}, "needs a direction"), ({"value": float("nan")}, "non-finite")]:
        with pytest.raises(ValueError, match=match):
            MetricRecord.from_json(dict(row, **bad))
    with pytest.raises(ValueError, match="lacks"):
        MetricRecord.from_json({"dataset": "x", "lang": "de", "metric": "r1"})


def test_update_card_results_merges_and_keeps_the_rest(carded, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(carded[0], folder)
    readme = folder / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8") + "\n## Notes\n\nHand-written notes stay.\n", encoding="utf-8")
    before = ModelCard.load(readme)
    new_records = [
        MetricRecord("multi30k", "test", "de", "t2v", "r1", 99.0, model="tiny"),
        MetricRecord("multi30k", "test", "cs", "v2t", "r10", 42.0, model="tiny"),
    ]
    card = update_card_results(folder, new_records)  # the modality: the one the card's results name
    after = ModelCard.load(readme)
    assert after.data.eval_results == card.data.eval_results
    assert len(after.data.eval_results) == len(before.data.eval_results) + 1
    by_key = {(r.task_type, r.dataset_config, r.metric_type): r.metric_value for r in after.data.eval_results}
    assert by_key[("text-to-image-retrieval", "de", "recall@1")] == 99.0
    assert by_key[("image-to-text-retrieval", "cs", "recall@10")] == 42.0
    assert by_key[("image-to-text-retrieval", "fr", "recall@1")] == next(
        r.metric_value for r in before.data.eval_results if (r.task_type, r.dataset_config, r.metric_type) == ("image-to-text-retrieval", "fr", "recall@1"))
    text = readme.read_text(encoding="utf-8")
    assert "Hand-written notes stay." in text and "| multi30k | test | de | 99.0 |" in text and "| multi30k | test | cs |" in text
    assert after.data.language == before.data.language and after.data.tags == before.data.tags
    assert text.count("cl2cm:results:start") == 1
    assert (folder / PLOT_FILENAME).read_bytes().startswith(PNG_MAGIC)


def test_update_without_a_card_builds_one(tmp_path):
    folder = make_checkpoint(tmp_path / "fresh")
    records = records_for("de", [1, 2, 3], [1, 4])
    card = update_card_results(folder, records)
    assert ModelCard.load(folder / "README.md").data.eval_results == card.data.eval_results == eval_results(records, None)


def test_card_from_the_trainer_outputs(tmp_path):
    """build_card(folder) alone: reads training_config.yaml and test_results.json of a run, in
    the temporary folder of cl2cm_hf.atomic.atomic_directory where the trainer writes it."""
    from cl2cm_hf.atomic import atomic_directory
    from cl2cm_hf.evaluation.records import save_records

    with atomic_directory(tmp_path / "run" / "cross_modal") as tmp:
        folder = make_checkpoint(tmp)
        records = [r for lang in ("de", "fr") for r in records_for(lang, [1, 2, 8, 30], [1, 1, 3], dataset="demo")]
        save_records(records, folder / "test_results.json")
        card = build_card(folder)
        assert len(card.data.eval_results) == 22
        assert {r.dataset_config for r in card.data.eval_results} == {"de", "fr"}
        assert card.data.model_name == "run" and '"<your-org>/run"' in card.text and (folder / PLOT_FILENAME).is_file()
        assert card.data.eval_results == eval_results(records, None) and card.data.language == ["en", "de", "fr"]


def test_card_from_an_old_flat_test_results_file(tmp_path, caplog):
    """A test_results.json written before records ({"de_t2v_r1": ...}) is migrated, with a warning."""
    folder = make_checkpoint(tmp_path / "run" / "cross_modal")
    results = {f"{lang}_{key}": value for lang in ("de", "fr")
               for key, value in metrics_from_ranks([1, 2, 8, 30], [1, 1, 3]).items()}
    results.update(sumr=1.0, mean_sumr=1.0)  # ignored: not per-language metrics (the trainer wrote a mean "sumr")
    (folder / "test_results.json").write_text(json.dumps(results))
    with caplog.at_level("WARNING"):
        card = build_card(folder)
    assert "old flat format" in caplog.text and "test_results.json" in caplog.text
    assert len(card.data.eval_results) == 22
    assert {(r.dataset_type, r.dataset_split) for r in card.data.eval_results} == {("multi30k", "test")}  # the recipe's dataset
    assert {r.dataset_config for r in card.data.eval_results} == {"de", "fr"}
    assert card.data.model_name == "run"


def test_card_names_modality_and_languages_as_told_and_publishes_no_local_path(tmp_path):
    folder = make_checkpoint(tmp_path / "ckpt")
    recipe = dict(TRAINING_CONFIG, output_dir=str(tmp_path / "runs" / "x"), text_model=str(tmp_path / "towers" / "e5"))
    card = build_card(folder, records_for("cs", [1, 2], [1, 3], dataset="vatex"), training_config=recipe,
                      target_languages=["cs"], visual_modality="video")
    text = (folder / "README.md").read_text(encoding="utf-8")
    # one rule with the recipe file (hub/local_paths.py): a path outside the working directory is cut to its name
    assert str(tmp_path) not in text and "text_model: e5" in text
    assert card.data.language == ["en", "cs"] and "in cs (and en)" in text
    assert {r.task_type for r in card.data.eval_results} == {"text-to-video-retrieval", "video-to-text-retrieval", "video-text-retrieval"}
    assert "embeds videos" in text
    # nothing told, nothing in the recipe or config: no language, "visual" task types
    bare = make_checkpoint(tmp_path / "bare")
    (bare / "training_config.yaml").unlink()
    card = build_card(bare, records_for("de", [1], [1]))
    assert card.data.language is None and card.data.eval_results[0].task_type == "text-to-visual-retrieval"
    # a temporal transformer in the config means video
    video = make_checkpoint(tmp_path / "video", visual_num_layers=1)
    assert build_card(video, records_for("de", [1], [1])).data.eval_results[0].task_type == "text-to-video-retrieval"


def test_staging_checks_the_checkpoint(carded, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(carded[0], folder)
    names = stage_checkpoint(folder, tmp_path / "staged")
    assert {"config.json", "model.safetensors", "modeling_cl2cm.py", "configuration_cl2cm.py", "losses.py",
            "README.md", PLOT_FILENAME, "tokenizer.json", "tokenizer_config.json", "training_config.yaml"} <= set(names)
    assert "optimizer.pt" not in names and "test_gallery" not in names
    api = FakeHubApi(tmp_path / "hf")
    for missing, message in [("README.md", "README.md"), ("losses.py", "losses.py"), ("modeling_cl2cm.py", "modeling_cl2cm.py"),
                             ("model.safetensors", "model.safetensors"), ("config.json", "config.json")]:
        broken = tmp_path / f"broken-{missing}"
        shutil.copytree(folder, broken)
        (broken / missing).unlink()
        with pytest.raises(CheckpointError, match=re.escape(message)):
            push_checkpoint(broken, "org/broken", api=api)
    assert api.calls == []  # nothing is sent for an incomplete checkpoint


def test_push_then_load_by_repo_id_offline(carded, tmp_path):
    folder, records = carded
    hf_home = tmp_path / "hf"
    api = FakeHubApi(hf_home)
    info = push_checkpoint(folder, "org/cl2cm-tiny", api=api, private=True, commit_message="Add tiny model")
    assert re.fullmatch(r"[0-9a-f]{40}", info.oid) and info.commit_url.endswith(info.oid)
    assert api.calls[0] == ("create_repo", "org/cl2cm-tiny", True, True)
    assert api.calls[1][:4] == ("upload_folder", "org/cl2cm-tiny", None, "Add tiny model")

    def snippet_of(checkpoint):
        return re.search(r"```python\n(.*?)```", (checkpoint / "README.md").read_text(encoding="utf-8"), flags=re.S).group(1)

    snippet = snippet_of(folder)
    assert 'repo_id = "org/cl2cm-tiny"' in snippet
    (tmp_path / "snippet_hub.py").write_text(snippet)  # as written: the repo id resolves from the cache
    snippets = ["snippet_hub.py"]
    # The snippet rendered for each kind of visual input, run on the local folder.
    video = make_checkpoint(tmp_path / "video", visual_num_layers=1, visual_max_frames=4)
    pixels = make_checkpoint(tmp_path / "pixels", backbone=True)
    cases = {"local": (folder, "org/cl2cm-tiny"), "video": (video, "org/video"), "pixels": (pixels, "org/pixels")}
    for name, (checkpoint, repo_id) in cases.items():
        if checkpoint is not folder:
            build_card(checkpoint, records, repo_id=repo_id)
        code = snippet_of(checkpoint).replace(json.dumps(repo_id), json.dumps(str(checkpoint)))
        assert json.dumps(str(checkpoint)) in code
        (tmp_path / f"snippet_{name}.py").write_text(code)
        snippets.append(f"snippet_{name}.py")
    assert "visual_mask" in snippet_of(video) and "processor(images=images" in snippet_of(pixels)
    script = textwrap.dedent(
        """
        import json, runpy, sys
        sys.modules["cl2cm_hf"] = None  # the checkpoint's own code must run
        import torch
        from huggingface_hub import ModelCard, hf_hub_download
        from transformers import AutoModel, AutoTokenizer
        model = AutoModel.from_pretrained("org/cl2cm-tiny", trust_remote_code=True).eval()
        tokenizer = AutoTokenizer.from_pretrained("org/cl2cm-tiny", trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            text = model.get_text_features(**tokenizer(["query: ein hund"], return_tensors="pt")).pooler_output
        assert text.shape == (1, 8)
        card = ModelCard.load(hf_hub_download("org/cl2cm-tiny", "README.md"))
        for name in SNIPPETS:
            runpy.run_path(name, run_name="__main__")
        print(json.dumps([vars(r) for r in card.data.eval_results]))
        """
    )
    script = script.replace("SNIPPETS", repr(snippets))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(hf_home), TRANSFORMERS_VERBOSITY="error")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Do you wish to run the custom code" not in proc.stdout + proc.stderr  # no prompt anywhere
    lines = proc.stdout.strip().splitlines()
    assert sum(line.startswith("torch.Size([2, 3])") for line in lines) == len(snippets), "\n".join(lines[:-1])
    loaded = [EvalResult(**r) for r in json.loads(lines[-1])]
    assert loaded == eval_results(records, "image")


@pytest.mark.skipif(not os.environ.get("HF_TOKEN"), reason="a real push needs HF_TOKEN (and network); the fake-api test covers the logic")
def test_real_push(carded):  # pragma: no cover - needs the network
    from huggingface_hub import HfApi

    api = HfApi()
    repo_id = f"{api.whoami()['name']}/cl2cm-hf-test-{uuid.uuid4().hex[:8]}"
    try:
        info = push_checkpoint(carded[0], repo_id, api=api, private=True)
        assert info.oid
        files = set(api.list_repo_files(repo_id))
        assert {"config.json", "model.safetensors", "modeling_cl2cm.py", "README.md", PLOT_FILENAME} <= files
    finally:
        api.delete_repo(repo_id, missing_ok=True)
