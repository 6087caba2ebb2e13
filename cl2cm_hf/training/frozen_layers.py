"""Cache of the frozen lower part of a text backbone (`cache_frozen_text_layers`).

With `freeze_text_layers: k` the embeddings and the lowest k transformer layers never change during a
run, so their output for one token sequence is a constant. Training on a fixed dataset runs the same
captions through them epoch after epoch (and stage after stage: the stage-2 text tower starts from
the stage-1 tower, whose frozen part is the pretrained one). `install_frozen_prefix_cache` makes a
backbone look each sequence up in a store (keyed by its token ids) and run only the upper layers;
a sequence not yet in the store is computed once, in eval mode, and kept.

Semantics: the frozen part runs without dropout (as in eval mode), for training and evaluation alike.
A store holds the output of one prefix (embeddings + lowest k layers) and is keyed by a fingerprint of
that prefix's weights, so it is shared in this process by every backbone with the same prefix: the
stage-2 towers of several systems, or a stage-1 network whose top layer was fine-tuned and the
pretrained tower below it. A sequence missing from a deep store is computed from the deepest
shallower store that exists (`register_prefix_store` keeps one), so caching a fine-tuned tower costs
only its fine-tuned layers. `save_store`/`load_store` keep stores between processes. Nothing of
this is saved with a model: the state dict, the config and `save_pretrained` are untouched; the
patch lives on the module instances only (and follows `copy.deepcopy`, which rebinds it to the copy).

Memory: 4 bytes x tokens x hidden size per distinct text and cached depth (the offline benchmark's
9,000 texts: about 300 MB for a 384-wide tower), held in CPU memory; meant for small and medium
datasets read many times, not for a 30k-image training set.

Works for backbones with `embeddings` and `encoder.layer` (BERT, XLM-R, e5, MiniLM, mBERT ...), fed
right-padded `input_ids` (rows in any other form, or calls with `inputs_embeds`, `position_ids` or
`output_hidden_states`, take the ordinary uncached path).
"""

from __future__ import annotations

import hashlib
import types

import torch
from torch import nn

_STORES: dict[str, dict[bytes, torch.Tensor]] = {}
_ATTR = "_cl2cm_frozen_prefix"  # (prefix keys by depth, number of cached layers) on the backbone instance
_MISS_BATCH = 128


def _layers(backbone: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if layers is None or getattr(backbone, "embeddings", None) is None:
        raise ValueError(f"cache_frozen_text_layers: {type(backbone).__name__} has no embeddings/encoder.layer")
    return layers


def _prefix_keys(backbone: nn.Module, num_layers: int) -> list[str]:
    """Store keys of the backbone's prefixes: entry k identifies the weights of the embeddings and the
    lowest k layers (architecture, names, shapes and a strided sample of every tensor, chained), so two
    backbones that share their lower layers (a fine-tuned copy) share those prefixes' keys."""
    digest = hashlib.sha1(f"{type(backbone).__name__}|".encode())
    keys = []
    for module in [backbone.embeddings, *list(_layers(backbone))[:num_layers]]:
        for name, tensor in module.state_dict().items():
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            digest.update(name.encode() + str(tuple(tensor.shape)).encode())
            digest.update(flat[::step].float().cpu().numpy().tobytes())
        keys.append(f"{digest.hexdigest()}-{len(keys)}")
    return keys


def install_frozen_prefix_cache(backbone: nn.Module, num_layers: int) -> int:
    """Serve the output of `backbone`'s embeddings and lowest `num_layers` layers (-1: all layers)
    from a per-process store. Those parts must be frozen for the run. Returns the cached depth."""
    layers = _layers(backbone)
    if num_layers < 0:
        num_layers = len(layers)
    if not 0 < num_layers <= len(layers):
        raise ValueError(f"cache_frozen_text_layers needs 1..{len(layers)} frozen layers (freeze_text_layers), got {num_layers}")
    trainable = [n for m in (backbone.embeddings, *list(layers)[:num_layers]) for n, p in m.named_parameters() if p.requires_grad]
    if trainable:
        raise ValueError(f"cache_frozen_text_layers: the cached part must be frozen, but {trainable[0]} is trainable")
    keys = _prefix_keys(backbone, num_layers)
    _STORES.setdefault(keys[num_layers], {})
    backbone.__dict__[_ATTR] = (keys, num_layers)
    backbone.forward = types.MethodType(_backbone_forward, backbone)
    backbone.embeddings.forward = types.MethodType(_embeddings_forward, backbone.embeddings)
    for layer in list(layers)[:num_layers]:
        layer.forward = types.MethodType(_layer_forward, layer)
    return num_layers


def register_prefix_store(backbone: nn.Module, depth: int) -> str:
    """Keep a store for the output of `backbone`'s lowest `depth` layers too (its cache must be installed
    deeper): sequences computed for the deeper store then pass through it, and a network that freezes
    only those layers (stage 1 under `cl_freeze_text_layers`) finds them there."""
    prefix_keys, num_layers = backbone.__dict__[_ATTR]
    if not 0 < depth < num_layers:
        raise ValueError(f"register_prefix_store: depth must be 1..{num_layers - 1}, got {depth}")
    _STORES.setdefault(prefix_keys[depth], {})
    return prefix_keys[depth]


def store_key(backbone: nn.Module) -> str:
    """The key of the store that serves `backbone` (its cache must be installed)."""
    prefix_keys, num_layers = backbone.__dict__[_ATTR]
    return prefix_keys[num_layers]


def store_size(key: str) -> int:
    """Number of sequences held by the store `key`."""
    return len(_STORES.get(key, {}))


def clear_frozen_prefix_caches(keep=()) -> None:
    """Drop every store but those in `keep`."""
    for key in [k for k in _STORES if k not in set(keep)]:
        del _STORES[key]


def _embeddings_forward(self, *args, **kwargs):
    states = self.__dict__.get("_cl2cm_states")
    return states if states is not None else type(self).forward(self, *args, **kwargs)


def _layer_forward(self, hidden_states, *args, **kwargs):
    if self.__dict__.get("_cl2cm_skip"):
        return hidden_states
    return type(self).forward(self, hidden_states, *args, **kwargs)


def _right_padded_lengths(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    if attention_mask is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1], dtype=torch.long)
    lengths = attention_mask.sum(1).long().cpu()
    expected = torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]
    return lengths if torch.equal(attention_mask.cpu().bool(), expected) else None


def _row_keys(input_ids: torch.Tensor, lengths: torch.Tensor, token_type_ids: torch.Tensor | None) -> list[bytes]:
    ids = input_ids.cpu().numpy()
    types_ = None if token_type_ids is None or not bool(token_type_ids.any()) else token_type_ids.cpu().numpy()
    keys = []
    for i, n in enumerate(lengths.tolist()):
        key = ids[i, :n].tobytes()
        if types_ is not None:
            key += b"|" + types_[i, :n].tobytes()
        keys.append(key)
    return keys


def _assemble(store: dict, keys: list[bytes], lengths: list[int], length: int) -> torch.Tensor:
    first = store[keys[0]]
    states = first.new_zeros((len(keys), length, first.shape[-1]))
    for i, (row_key, n) in enumerate(zip(keys, lengths)):
        states[i, :n] = store[row_key]
    return states


@torch.no_grad()
def _compute_misses(self, prefix_keys: list[str], depth: int, rows: list[tuple[bytes, torch.Tensor, torch.Tensor | None]]) -> None:
    """Store the depth-`depth` states of `rows` (eval mode, only the layers needed). They start from the
    deepest shallower prefix that has a store (filled first, recursively), else from the embeddings."""
    store = _STORES.setdefault(prefix_keys[depth], {})
    base = next((k for k in range(depth - 1, 0, -1) if prefix_keys[k] in _STORES), 0)
    if base:
        base_store = _STORES[prefix_keys[base]]
        missing = [r for r in rows if r[0] not in base_store]
        if missing:
            _compute_misses(self, prefix_keys, base, missing)
    was_training = self.training
    full = self.encoder.layer
    skipped = list(full)[:base]
    self.eval()
    self.encoder.layer = nn.ModuleList(list(full)[:depth])
    try:
        rows = sorted(rows, key=lambda r: len(r[1]))
        for start in range(0, len(rows), _MISS_BATCH):
            chunk = rows[start : start + _MISS_BATCH]
            lengths = [len(r[1]) for r in chunk]
            longest = max(lengths)
            ids = torch.zeros(len(chunk), longest, dtype=torch.long)
            mask = torch.zeros(len(chunk), longest, dtype=torch.long)
            types_ = torch.zeros(len(chunk), longest, dtype=torch.long)
            for i, (_, row_ids, row_types) in enumerate(chunk):
                ids[i, : len(row_ids)] = row_ids
                mask[i, : len(row_ids)] = 1
                if row_types is not None:
                    types_[i, : len(row_ids)] = row_types
            device = next(self.parameters()).device
            if base:
                self.embeddings.__dict__["_cl2cm_states"] = _assemble(base_store, [r[0] for r in chunk], lengths, longest).to(device)
                for layer in skipped:
                    layer.__dict__["_cl2cm_skip"] = True
            try:
                out = type(self).forward(
                    self, input_ids=ids.to(device), attention_mask=mask.to(device), token_type_ids=types_.to(device)
                ).last_hidden_state
            finally:
                self.embeddings.__dict__.pop("_cl2cm_states", None)
                for layer in skipped:
                    layer.__dict__.pop("_cl2cm_skip", None)
            for i, (key, row_ids, _) in enumerate(chunk):
                store[key] = out[i, : len(row_ids)].detach().to("cpu", copy=True)
    finally:
        self.encoder.layer = full
        self.train(was_training)


def _backbone_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
    prefix_keys, num_layers = self.__dict__[_ATTR]
    uncached = (
        input_ids is None
        or input_ids.dim() != 2
        or any(kwargs.get(k) is not None for k in ("inputs_embeds", "position_ids", "output_hidden_states", "output_attentions"))
    )
    lengths = None if uncached else _right_padded_lengths(input_ids, attention_mask)
    if lengths is None:
        return type(self).forward(self, input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
    store = _STORES.setdefault(prefix_keys[num_layers], {})
    lengths = lengths.tolist()
    keys = _row_keys(input_ids, torch.tensor(lengths), token_type_ids)
    misses, seen = [], set()
    for i, row_key in enumerate(keys):
        if row_key not in store and row_key not in seen:
            seen.add(row_key)
            row_types = None if token_type_ids is None else token_type_ids[i, : lengths[i]].cpu()
            misses.append((row_key, input_ids[i, : lengths[i]].cpu(), row_types))
    if misses:
        _compute_misses(self, prefix_keys, num_layers, misses)
    states = _assemble(store, keys, lengths, input_ids.shape[1])
    layers = list(self.encoder.layer)[:num_layers]
    self.embeddings.__dict__["_cl2cm_states"] = states.to(input_ids.device)
    for layer in layers:
        layer.__dict__["_cl2cm_skip"] = True
    try:
        return type(self).forward(self, input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
    finally:
        self.embeddings.__dict__.pop("_cl2cm_states", None)
        for layer in layers:
            layer.__dict__.pop("_cl2cm_skip", None)


# --- persistence (a benchmark keeps the stores of pretrained weights between runs) -----------------
def cache_keys(backbone: nn.Module) -> list[str]:
    """Keys of the stores that `backbone`'s installed cache can use (its prefixes that have a store)."""
    prefix_keys, _ = backbone.__dict__.get(_ATTR, ([], 0))
    return [k for k in prefix_keys if k in _STORES]


def save_store(key: str, path) -> None:
    """Write store `key` to `path` (one file: concatenated states, lengths and the token keys)."""
    store = _STORES[key]
    keys = list(store)
    states = torch.cat([store[k] for k in keys]) if keys else torch.zeros(0)
    lengths = torch.tensor([len(store[k]) for k in keys], dtype=torch.long)
    tmp = f"{path}.tmp"
    torch.save({"key": key, "keys": keys, "lengths": lengths, "states": states}, tmp)
    import os

    os.replace(tmp, path)


def load_store(path) -> str:
    """Merge a saved store into this process's store of the same key; returns the key."""
    saved = torch.load(path, weights_only=True)
    store = _STORES.setdefault(saved["key"], {})
    for row_key, part in zip(saved["keys"], torch.split(saved["states"], saved["lengths"].tolist())):
        store.setdefault(row_key, part)
    return saved["key"]
