"""Checkpoints as shipped: save_pretrained + tokenizer (+ processor for the cross-modal ones), then
load in a fresh process that cannot import cl2cm_hf (the installed package would otherwise shadow
the checkpoint's own code), offline, from a folder and by hub id from the HF cache layout, and
compare embeddings and processor outputs with the original."""

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import (
    FEATURE_DIM,
    IMAGE_SIZE,
    backbone_config,
    build_wordpiece_tokenizer,
    cross_lingual_config,
    features_config,
    frame_mask,
)

from cl2cm_hf import CL2CMCrossLingualModel, CL2CMCrossModalModel, build_processor

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

REPO = Path(__file__).resolve().parents[1]
CODE_FILES = ("configuration_cl2cm.py", "modeling_cl2cm.py", "losses.py")
PROCESSOR_FILES = ("processing_cl2cm.py", "video_processing_cl2cm.py", "processor_config.json")  # cross-modal checkpoints
SHA = "0123456789abcdef0123456789abcdef01234567"
SENTENCES = ["A man plays guitar on the street.", "ein Hund spielt", "un homme joue"]

# name -> (model class, config factory, config kwargs, hub id)
CHECKPOINTS = {
    "cross_lingual": (CL2CMCrossLingualModel, cross_lingual_config, {"share_encoders": False}, "org/cl2cm-test-cl"),
    "features": (CL2CMCrossModalModel, features_config, {"visual_num_layers": 1, "text_prefix": "query: "}, "org/cl2cm-test"),
    "backbone": (CL2CMCrossModalModel, backbone_config, {"visual_num_layers": 1, "text_prefix": "query: "}, "org/cl2cm-test-backbone"),
}

BAD_FIELDS = (("projection_dim", -5), ("visual_encoder_type", "bogus"))

CHILD = textwrap.dedent(
    r"""
    import sys
    sys.modules["cl2cm_hf"] = None  # the installed package must play no part
    try:
        import cl2cm_hf  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("cl2cm_hf is importable in the child process")

    import inspect, json, os
    import torch
    from transformers import AutoConfig, AutoModel, AutoProcessor, AutoTokenizer

    torch.set_num_threads(1)
    spec = json.load(open(sys.argv[1]))
    inputs = torch.load(spec["inputs"], weights_only=True)
    results = {}

    def embed(model, kind):
        model.eval()
        with torch.no_grad():
            if kind == "cross_lingual":
                tokens, _ = model.get_token_features(inputs["input_ids"], inputs["attention_mask"], language="target")
                return {
                    "source": model.get_text_features(inputs["input_ids"], inputs["attention_mask"], language="source").pooler_output,
                    "target": model.get_text_features(inputs["input_ids"], inputs["attention_mask"], language="target").pooler_output,
                    "tokens": tokens,
                    "scale": model.scale(),
                }
            if kind == "features":
                visual = model.get_video_features(visual_features=inputs["features"], visual_mask=inputs["frame_mask"]).pooler_output
            else:
                visual = model.get_video_features(pixel_values=inputs["pixels"], visual_mask=inputs["pixel_mask"]).pooler_output
            return {
                "text": model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output,
                "visual": visual,
                "scale": model.scale(),
            }

    def processed(processor, model, kind):
        # The shipped processor on raw sentences and images, and the embeddings of its outputs.
        module = type(processor).__module__
        assert module.startswith("transformers_modules."), f"{kind}: the processor comes from {module}"
        text = processor(text=spec["sentences"], padding=True, return_tensors="pt")
        out = {"proc_input_ids": text["input_ids"], "proc_class": type(processor).__name__,
               "proc_text": model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"]).pooler_output}
        images = [image.numpy() for image in inputs["images"]]
        if kind == "features":
            try:
                processor(images=images)
            except ValueError as err:
                out["proc_image_error"] = str(err)
            return out
        pixels = processor(images=images)
        video = processor(videos=[images[:1], images])
        out.update(proc_pixels=pixels["pixel_values"], proc_video=video["pixel_values"], proc_mask=video["visual_mask"])
        with torch.no_grad():
            out["proc_visual"] = model.get_image_features(**pixels).pooler_output
            out["proc_video_visual"] = model.get_video_features(**video).pooler_output
        return out

    for name, entry in spec["checkpoints"].items():
        for how, where in (("folder", entry["folder"]), ("hub", entry["hub_id"])):
            config = AutoConfig.from_pretrained(where, trust_remote_code=True)
            model = AutoModel.from_pretrained(where, trust_remote_code=True)
            for obj in (config, model):
                module = type(obj).__module__
                assert module.startswith("transformers_modules."), f"{name}/{how}: {type(obj)} comes from {module}"
                assert "cl2cm_hf" not in module, module
                source = os.path.realpath(inspect.getfile(type(obj)))
                assert source.startswith(os.path.realpath(os.environ["HF_HOME"])), source
            assert type(model).__name__ == entry["class"], type(model)
            tok = AutoTokenizer.from_pretrained(where)
            enc = tok(spec["sentences"], padding=True, return_tensors="pt")
            results[f"{name}/{how}"] = {
                **embed(model, name),
                "tok_input_ids": enc["input_ids"],
                "tok_attention_mask": enc["attention_mask"],
                "tok_text": model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output,
            }
            if name != "cross_lingual":
                results[f"{name}/{how}"].update(processed(AutoProcessor.from_pretrained(where, trust_remote_code=True), model, name))

    # A broken config.json fails with a message naming the field, through the shipped code too.
    errors = {}
    for bad in spec["bad_folders"]:
        try:
            AutoModel.from_pretrained(bad, trust_remote_code=True)
        except ValueError as err:
            errors[bad] = str(err)
        else:
            errors[bad] = "NO ERROR"
    json.dump(errors, open(spec["errors"], "w"))

    leaked = sorted(m for m, v in sys.modules.items() if m.startswith("cl2cm_hf") and v is not None)
    assert not leaked, leaked
    torch.save(results, spec["output"])
    print("CHILD OK")
    """
)


def _inputs():
    g = torch.Generator().manual_seed(2024)
    ids = torch.randint(5, 1000, (3, 8), generator=g)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "features": torch.randn(3, 4, FEATURE_DIM, generator=g),
        "frame_mask": frame_mask([4, 2, 1], 4),
        "pixels": torch.randn(3, 2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g),
        "pixel_mask": frame_mask([2, 1, 2], 2),
        "images": torch.randint(0, 256, (3, 20, 24, 3), generator=g, dtype=torch.uint8),
    }


def _embed_here(model, kind, inputs):
    """The same computation as the child's `embed`, on the original in-process model."""
    model.eval()
    with torch.no_grad():
        if kind == "cross_lingual":
            tokens, _ = model.get_token_features(inputs["input_ids"], inputs["attention_mask"], language="target")
            return {
                "source": model.get_text_features(inputs["input_ids"], inputs["attention_mask"], language="source").pooler_output,
                "target": model.get_text_features(inputs["input_ids"], inputs["attention_mask"], language="target").pooler_output,
                "tokens": tokens,
                "scale": model.scale(),
            }
        if kind == "features":
            visual = model.get_video_features(visual_features=inputs["features"], visual_mask=inputs["frame_mask"]).pooler_output
        else:
            visual = model.get_video_features(pixel_values=inputs["pixels"], visual_mask=inputs["pixel_mask"]).pooler_output
        return {
            "text": model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output,
            "visual": visual,
            "scale": model.scale(),
        }


def _image_processor(name):
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}) if name == "backbone" else None


def _lay_out_hub_cache(hf_home: Path, repo_id: str, folder: Path) -> None:
    org, name = repo_id.split("/")
    repo = hf_home / "hub" / f"models--{org}--{name}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    shutil.copytree(folder, repo / "snapshots" / SHA)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """Save the three checkpoints, lay them out as a hub cache, run the child once."""
    root = tmp_path_factory.mktemp("hub_roundtrip")
    assert REPO not in root.resolve().parents, "the child must run outside the repository"
    hf_home = root / "hf_home"
    tokenizer = build_wordpiece_tokenizer()
    inputs = _inputs()
    torch.save(inputs, root / "inputs.pt")

    originals, spec = {}, {"checkpoints": {}, "inputs": str(root / "inputs.pt"), "output": str(root / "out.pt")}
    for name, (cls, config_fn, kwargs, hub_id) in CHECKPOINTS.items():
        torch.manual_seed(7)
        model = cls(config_fn(logit_scale_init_value=2.0, **kwargs)).eval()
        with torch.no_grad():  # make the scale and heads differ from any fresh init
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
            model.logit_scale.fill_(1.7)
        folder = root / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if cls is CL2CMCrossModalModel:
            build_processor(tokenizer, model.config.text_prefix, _image_processor(name)).save_pretrained(folder)
        _lay_out_hub_cache(hf_home, hub_id, folder)
        originals[name] = model
        spec["checkpoints"][name] = {"folder": str(folder), "hub_id": hub_id, "class": cls.__name__}
    spec["sentences"] = SENTENCES
    spec["bad_folders"], spec["errors"] = [], str(root / "errors.json")
    for field, value in BAD_FIELDS:
        bad = root / f"bad_{field}"
        shutil.copytree(root / "features", bad)
        data = json.loads((bad / "config.json").read_text())
        data[field] = value
        (bad / "config.json").write_text(json.dumps(data))
        spec["bad_folders"].append(str(bad))
    (root / "spec.json").write_text(json.dumps(spec))
    (root / "child.py").write_text(CHILD)
    cwd = root / "cwd"
    cwd.mkdir()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "PYTHON"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(hf_home), OMP_NUM_THREADS="1")
    assert str(REPO) not in env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-I", str(root / "child.py"), str(root / "spec.json")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "CHILD OK" in proc.stdout, f"child failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    results = torch.load(root / "out.pt", weights_only=True)
    results["errors"] = json.loads((root / "errors.json").read_text())
    return {"root": root, "originals": originals, "inputs": inputs, "results": results, "tokenizer": tokenizer}


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_checkpoint_folder_layout(shipped, name):
    folder = shipped["root"] / name
    cls = CHECKPOINTS[name][0]
    config = json.loads((folder / "config.json").read_text())
    config_cls = cls.config_class.__name__
    assert config["auto_map"] == {
        "AutoConfig": f"configuration_cl2cm.{config_cls}",
        "AutoModel": f"modeling_cl2cm.{cls.__name__}",
    }
    assert config["architectures"] == [cls.__name__]
    assert config["model_type"] == cls.config_class.model_type
    for file in CODE_FILES + ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / file).is_file(), f"{file} missing from the checkpoint"
    # The copied code is the package's code.
    for file in CODE_FILES:
        assert (folder / file).read_text() == (REPO / "cl2cm_hf" / file).read_text()
    if cls is CL2CMCrossModalModel:
        processor_class = "CL2CMProcessor" if name == "backbone" else "CL2CMTextProcessor"
        processor = json.loads((folder / "processor_config.json").read_text())
        assert processor["auto_map"] == {"AutoProcessor": f"processing_cl2cm.{processor_class}"}
        assert processor["processor_class"] == processor_class and processor["text_prefix"] == "query: "
        assert ("image_processor" in processor) == ("video_processor" in processor) == (name == "backbone")
        assert (folder / "processing_cl2cm.py").read_text() == (REPO / "cl2cm_hf" / "processing_cl2cm.py").read_text()


def test_shipped_code_imports_only_torch_transformers_stdlib_and_itself(shipped):
    folder = shipped["root"] / "features"
    allowed = {"torch", "transformers", "numpy"} | set(sys.stdlib_module_names)  # numpy: a dependency of transformers
    for file in CODE_FILES + PROCESSOR_FILES[:2]:
        tree = ast.parse((folder / file).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in allowed, f"{file}: import {alias.name}"
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    # save_pretrained follows only `from .x import y`, flattened into the folder
                    assert node.module, f"{file}: `from . import ...` is not copied into checkpoints"
                    assert (folder / f"{node.module}.py").is_file(), f"{file}: .{node.module} is not shipped"
                else:
                    assert node.module.split(".")[0] in allowed, f"{file}: from {node.module} import ..."


@pytest.mark.parametrize("how", ["folder", "hub"])
@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_remote_code_embeddings_match_original(shipped, name, how):
    want = _embed_here(shipped["originals"][name], name, shipped["inputs"])
    got = shipped["results"][f"{name}/{how}"]
    for key, value in want.items():
        assert got[key].shape == value.shape, key
        diff = (got[key] - value).abs().max().item()
        assert diff < 1e-6, f"{name} loaded from {how}: {key} differs by {diff}"
    assert got["scale"].item() == pytest.approx(torch.tensor(1.7).exp().item(), rel=1e-6)


@pytest.mark.parametrize("how", ["folder", "hub"])
def test_tokenizer_round_trip_and_embeddings_of_real_text(shipped, how):
    enc = shipped["tokenizer"](SENTENCES, padding=True, return_tensors="pt")
    for name in CHECKPOINTS:
        got = shipped["results"][f"{name}/{how}"]
        assert torch.equal(got["tok_input_ids"], enc["input_ids"])
        assert torch.equal(got["tok_attention_mask"], enc["attention_mask"])
        model = shipped["originals"][name]
        with torch.no_grad():
            want = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output
        assert (got["tok_text"] - want).abs().max().item() < 1e-6
    # the words of the sentences are in the tiny vocabulary (no [UNK] beyond the period)
    unk = shipped["tokenizer"].unk_token_id
    assert (enc["input_ids"] == unk).sum() <= 1


@pytest.mark.parametrize("field, value", BAD_FIELDS)
def test_edited_config_fails_clearly_through_shipped_code(shipped, field, value):
    message = shipped["results"]["errors"][str(shipped["root"] / f"bad_{field}")]
    assert f"{field}={value!r}" in message, message


@pytest.mark.parametrize("how", ["folder", "hub"])
@pytest.mark.parametrize("name", ["features", "backbone"])
def test_processor_round_trip_without_cl2cm_hf(shipped, name, how):
    """AutoProcessor loads the checkpoint's own processor: the prefix added once, pixels as here."""
    got, model = shipped["results"][f"{name}/{how}"], shipped["originals"][name]
    processor = build_processor(shipped["tokenizer"], "query: ", _image_processor(name))
    assert got["proc_class"] == type(processor).__name__
    want = shipped["tokenizer"](["query: " + s for s in SENTENCES], padding=True, return_tensors="pt")
    assert torch.equal(got["proc_input_ids"], want["input_ids"])
    with torch.no_grad():
        text = model.get_text_features(input_ids=want["input_ids"], attention_mask=want["attention_mask"]).pooler_output
    assert (got["proc_text"] - text).abs().max().item() < 1e-6
    images = [image.numpy() for image in shipped["inputs"]["images"]]
    if name == "features":
        assert "no image processor" in got["proc_image_error"]
        return
    pixels = processor(images=images)["pixel_values"]
    assert pixels.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE) and torch.equal(got["proc_pixels"], pixels)
    assert torch.equal(got["proc_video"][1], pixels) and got["proc_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    with torch.no_grad():
        assert (got["proc_visual"] - model.get_image_features(pixel_values=pixels).pooler_output).abs().max().item() < 1e-6
        video = processor(videos=[images[:1], images])
        assert (got["proc_video_visual"] - model.get_video_features(**video).pooler_output).abs().max().item() < 1e-6
