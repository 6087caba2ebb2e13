"""PEFT on a CL2CM model: a LoRA adapter on the text tower (adding a language cheaply), trained with
gradient checkpointing, saved alone and reloaded with `PeftModel.from_pretrained` on the base."""

import pytest
import torch
from conftest import FEATURE_DIM, features_config, text_batch

from cl2cm_hf import CL2CMCrossModalModel

peft = pytest.importorskip("peft", reason="peft is a test extra (pip install -e '.[dev]')")


def test_lora_on_the_text_tower_trains_with_gradient_checkpointing_and_reloads(tmp_path):
    torch.manual_seed(0)
    base = CL2CMCrossModalModel(features_config())
    base.save_pretrained(tmp_path / "base")
    base.gradient_checkpointing_enable()
    base.enable_input_require_grads()  # LoRA freezes the embeddings; checkpointed layers need grad inputs
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=r"text_model\.backbone\..*\.(query|value)")
    model = peft.get_peft_model(base, lora)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)

    ids, mask = text_batch(4, 7)
    features = torch.randn(4, FEATURE_DIM)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        loss = model(input_ids=ids, attention_mask=mask, visual_features=features, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert any(not torch.equal(p, before[name]) for name, p in model.named_parameters() if name in before)

    model.eval()
    with torch.no_grad():
        want = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    reloaded = peft.PeftModel.from_pretrained(CL2CMCrossModalModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()
    with torch.no_grad():
        got = reloaded.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    torch.testing.assert_close(got, want)
    with torch.no_grad():  # the adapter changed the text side: not the base model's embeddings
        plain = CL2CMCrossModalModel.from_pretrained(tmp_path / "base").eval().get_text_features(input_ids=ids, attention_mask=mask)
    assert not torch.allclose(plain.pooler_output, want)
