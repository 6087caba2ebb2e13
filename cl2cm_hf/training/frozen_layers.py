"""Cache of the frozen lower part of a text backbone (`cache_frozen_text_layers`).

With `freeze_text_layers: k` the embeddings and the lowest k transformer layers never change during a
run, so their output for one token sequence is a constant. Training on a fixed dataset runs the same
captions through them epoch after epoch (and stage after stage: the stage-2 text tower starts from
the stage-1 tower, whose frozen part is the pretrained one). `FrozenPrefixBackbone` runs a backbone
with that part served from a `FrozenLayerStore` (keyed by token ids) and only the upper layers
computed; a sequence not yet in the store is computed once, in eval mode, and kept.

Semantics: the frozen part runs without dropout (as in eval mode), for training and evaluation alike.
The layers above it run on groups of rows of similar length, each group padded only to its own
longest row (`_length_groups`): a batch of captions padded to its longest is about half padding
(Multi30K's at 40 tokens), and a trained top layer spends most of a training step there. Per row
this is the same computation as the padded batch (rows do not attend across each other); what
differs is the floating-point rounding of the smaller matrix products and the order in which the
trained layer's dropout masks are drawn.
The store holds, per prefix (embeddings + lowest k layers), one table keyed by a fingerprint of that
prefix's weights, so one store object passed to every backbone of a run (or of a benchmark process)
shares a table between all backbones with the same prefix: the stage-2 towers of several systems, or
a stage-1 network whose top layer was fine-tuned and the pretrained tower below it. A sequence
missing from a deep table is computed from the deepest shallower table that exists (`keep_depths`
creates one), so caching a fine-tuned tower costs only its fine-tuned layers. `save`/`load` keep
tables between processes.

Nothing of this is saved with a model: `FrozenPrefixBackbone` registers the backbone's own children
under their own names, so the state dict, the config and what `save_pretrained` writes stay those of
the plain backbone; `cache_frozen_layers(tower, ...)` puts it in a text tower's `backbone` slot and
`plain_backbone` gives the backbone back.

Memory: 4 bytes x tokens x hidden size per distinct text and cached depth (the offline benchmark's
9,000 texts: about 300 MB for a 384-wide tower), held in CPU memory; meant for small and medium
datasets read many times, not for a 30k-image training set.

Works for encoder backbones called as BERT's `forward` calls its parts (`embeddings`, a bidirectional
mask from `transformers.masking_utils`, then each of `encoder.layer`): BERT, XLM-R, e5, MiniLM,
mBERT ... fed right-padded `input_ids`. Rows in any other form, and calls with more arguments
(`inputs_embeds`, `position_ids`, `output_hidden_states` ...), take the backbone's own forward.
"""

from __future__ import annotations

import hashlib
import os

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling

from cl2cm_hf.errors import CL2CMError

_MISS_BATCH = 128
# Rows per call of the layers above the cached prefix: of 128, 64, 32 and 16, the fastest in a timing
# of multilingual-e5-small's layer (forward and backward on Multi30K captions). What it buys end to end
# (docs/results.md): the benchmark's e5 fold 0, top layer trained, 6 min 10 s before, 4 min 52 s after.
_UPPER_GROUP = 32


class FrozenLayerStore:
    """The cached outputs of frozen prefixes: one table `{token key: (length, hidden) states}` per
    prefix key. Created by the run (or a benchmark, for all its runs) and handed to every backbone
    that should share it; copies of a cached backbone (`copy.deepcopy`) share it too."""

    def __init__(self):
        self._tables: dict[str, dict[bytes, torch.Tensor]] = {}

    def __deepcopy__(self, memo):
        return self

    def __contains__(self, key: str) -> bool:
        return key in self._tables

    def table(self, key: str) -> dict[bytes, torch.Tensor]:
        """The table of prefix `key`, created empty if absent."""
        return self._tables.setdefault(key, {})

    def keys(self) -> list[str]:
        return list(self._tables)

    def size(self, key: str) -> int:
        """Number of sequences held for prefix `key`."""
        return len(self._tables.get(key, {}))

    def keep(self, keys=()) -> None:
        """Drop every table but those in `keys`."""
        for key in [k for k in self._tables if k not in set(keys)]:
            del self._tables[key]

    def save(self, key: str, path) -> None:
        """Write the table `key` to `path` (one file: concatenated states, lengths and the token keys)."""
        table = self._tables[key]
        rows = list(table)
        states = torch.cat([table[k] for k in rows]) if rows else torch.zeros(0)
        lengths = torch.tensor([len(table[k]) for k in rows], dtype=torch.long)
        tmp = f"{path}.tmp"
        torch.save({"key": key, "keys": rows, "lengths": lengths, "states": states}, tmp)
        os.replace(tmp, path)

    def load(self, path) -> str:
        """Merge a saved table into the table of the same key; returns the key."""
        saved = torch.load(path, weights_only=True)
        table = self.table(saved["key"])
        for row_key, part in zip(saved["keys"], torch.split(saved["states"], saved["lengths"].tolist())):
            table.setdefault(row_key, part)
        return saved["key"]


def _layers(backbone: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if layers is None or getattr(backbone, "embeddings", None) is None:
        raise CL2CMError(f"cache_frozen_text_layers: {type(backbone).__name__} has no embeddings/encoder.layer")
    return layers


def _prefix_keys(backbone: nn.Module, num_layers: int) -> list[str]:
    """Table keys of the backbone's prefixes: entry k identifies the weights of the embeddings and the
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


def _right_padded_lengths(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    if attention_mask is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1], dtype=torch.long)
    lengths = attention_mask.sum(1).long().cpu()
    expected = torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]
    return lengths if torch.equal(attention_mask.cpu().bool(), expected) else None


def _row_keys(input_ids: torch.Tensor, lengths: list[int], token_type_ids: torch.Tensor | None) -> list[bytes]:
    ids = input_ids.cpu().numpy()
    types_ = None if token_type_ids is None or not bool(token_type_ids.any()) else token_type_ids.cpu().numpy()
    keys = []
    for i, n in enumerate(lengths):
        key = ids[i, :n].tobytes()
        if types_ is not None:
            key += b"|" + types_[i, :n].tobytes()
        keys.append(key)
    return keys


def _length_groups(lengths: list[int], size: int) -> list[list[int]]:
    """Row indices sorted by length, cut into groups of `size` (each padded to its own longest row)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + size] for start in range(0, len(order), size)]


def _assemble(table: dict, keys: list[bytes], lengths: list[int], length: int) -> torch.Tensor:
    first = table[keys[0]]
    states = first.new_zeros((len(keys), length, first.shape[-1]))
    for i, (row_key, n) in enumerate(zip(keys, lengths)):
        states[i, :n] = table[row_key]
    return states


class FrozenPrefixBackbone(nn.Module):
    """A text backbone whose embeddings and lowest `num_layers` layers (-1: all) are read from
    `store`; only the layers above run. Those parts must be frozen for the run.

    The backbone's children are registered here under their own names (parameters, state-dict keys
    and `train()`/`eval()`/`to()` reach the same modules); the backbone object itself is kept outside
    the module tree (`plain`), for rows the cache does not serve and for copies of the plain network.
    `keep_depths`: shallower prefixes that get a table too (sequences computed for the deep table
    pass through them, and a network that freezes only those layers finds them there).
    """

    def __init__(self, backbone: nn.Module, num_layers: int, store: FrozenLayerStore, keep_depths=()):
        super().__init__()
        layers = _layers(backbone)
        if num_layers < 0:
            num_layers = len(layers)
        if not 0 < num_layers <= len(layers):
            raise CL2CMError(f"cache_frozen_text_layers needs 1..{len(layers)} frozen layers (freeze_text_layers), got {num_layers}")
        if getattr(backbone.config, "is_decoder", False):
            raise CL2CMError(f"cache_frozen_text_layers: {type(backbone).__name__} is a decoder; only bidirectional encoders are cached")
        own = [n for n, _ in (*backbone.named_parameters(recurse=False), *backbone.named_buffers(recurse=False))]
        if own:
            raise CL2CMError(f"cache_frozen_text_layers: {type(backbone).__name__} holds tensors outside its submodules ({own[0]})")
        trainable = [n for m in (backbone.embeddings, *list(layers)[:num_layers]) for n, p in m.named_parameters() if p.requires_grad]
        if trainable:
            raise CL2CMError(f"cache_frozen_text_layers: the cached part must be frozen, but {trainable[0]} is trainable")
        for name, child in backbone.named_children():
            self.add_module(name, child)
        self.config = backbone.config
        self._plain = [backbone]  # a list: nn.Module does not register it, its children are registered above
        self.num_layers = num_layers
        self.store = store
        self.prefix_keys = _prefix_keys(backbone, num_layers)
        store.table(self.prefix_keys[num_layers])
        for depth in keep_depths:
            if not 0 < depth < num_layers:
                raise CL2CMError(f"keep_depths: each depth must be 1..{num_layers - 1}, got {depth}")
            store.table(self.prefix_keys[depth])

    @property
    def plain(self) -> nn.Module:
        """The backbone itself (same modules, its own forward)."""
        return self._plain[0]

    @property
    def store_key(self) -> str:
        """The key of the table that serves this backbone."""
        return self.prefix_keys[self.num_layers]

    def cache_keys(self) -> list[str]:
        """Keys of the tables this backbone can use (its prefixes that have a table)."""
        return [k for k in self.prefix_keys if k in self.store]

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
        # Output flags left off are no extra request (the model passes them as False when not asked).
        kwargs = {k: v for k, v in kwargs.items() if v or k not in ("output_attentions", "output_hidden_states")}
        lengths = None if kwargs or input_ids is None or input_ids.dim() != 2 else _right_padded_lengths(input_ids, attention_mask)
        if lengths is None:
            return self.plain(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
        lengths = lengths.tolist()
        keys = _row_keys(input_ids, lengths, token_type_ids)
        table = self.store.table(self.store_key)
        misses, seen = [], set()
        for i, row_key in enumerate(keys):
            if row_key not in table and row_key not in seen:
                seen.add(row_key)
                row_types = None if token_type_ids is None else token_type_ids[i, : lengths[i]].cpu()
                misses.append((row_key, input_ids[i, : lengths[i]].cpu(), row_types))
        if misses:
            self._compute_misses(self.num_layers, misses)
        hidden = self._upper_layers(table, keys, lengths, input_ids.shape[1], input_ids.device)
        pooler = getattr(self, "pooler", None)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooler(hidden) if pooler is not None else None)

    def _upper_layers(self, table: dict, keys: list[bytes], lengths: list[int], width: int, device) -> torch.Tensor:
        """The cached states of the rows run through the layers above the prefix, in length groups,
        returned as one batch `width` tokens long (what lies past a row's length is padding)."""
        if self.num_layers == len(self.encoder.layer):
            return _assemble(table, keys, lengths, width).to(device)
        groups = _length_groups(lengths, _UPPER_GROUP)
        parts = []
        for rows in groups:
            row_lengths = [lengths[i] for i in rows]
            longest = max(row_lengths)
            states = _assemble(table, [keys[i] for i in rows], row_lengths, longest).to(device)
            mask = (torch.arange(longest)[None, :] < torch.tensor(row_lengths)[:, None]).long().to(device)
            hidden = self._run_layers(states, mask, self.num_layers, len(self.encoder.layer))
            parts.append(nn.functional.pad(hidden, (0, 0, 0, width - longest)))
        order = torch.tensor([i for rows in groups for i in rows])
        return torch.cat(parts)[torch.argsort(order).to(device)]

    def _run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, start: int, stop: int) -> torch.Tensor:
        """Layers `start..stop-1` on `hidden`, called as BERT's forward calls them (same mask, same arguments)."""
        if start >= stop:
            return hidden
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in list(self.encoder.layer)[start:stop]:
            hidden = layer(hidden, mask, None, encoder_attention_mask=None, cache=None, position_ids=None)
        return hidden

    @torch.no_grad()
    def _compute_misses(self, depth: int, rows: list[tuple[bytes, torch.Tensor, torch.Tensor | None]]) -> None:
        """Store the depth-`depth` states of `rows` (eval mode, only the layers needed). They start from the
        deepest shallower prefix that has a table (filled first, recursively), else from the embeddings."""
        table = self.store.table(self.prefix_keys[depth])
        base = next((k for k in range(depth - 1, 0, -1) if self.prefix_keys[k] in self.store), 0)
        if base:
            base_table = self.store.table(self.prefix_keys[base])
            missing = [r for r in rows if r[0] not in base_table]
            if missing:
                self._compute_misses(base, missing)
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            for group in _length_groups([len(r[1]) for r in rows], _MISS_BATCH):
                chunk = [rows[i] for i in group]
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
                if base:
                    hidden = _assemble(base_table, [r[0] for r in chunk], lengths, longest).to(device)
                else:
                    hidden = self.embeddings(input_ids=ids.to(device), token_type_ids=types_.to(device))
                out = self._run_layers(hidden, mask.to(device), base, depth)
                for i, (key, row_ids, _) in enumerate(chunk):
                    table[key] = out[i, : len(row_ids)].detach().to("cpu", copy=True)
        finally:
            self.train(was_training)


def plain_backbone(backbone: nn.Module) -> nn.Module:
    """`backbone` without a frozen-layer cache (the backbone itself if it has none)."""
    return backbone.plain if isinstance(backbone, FrozenPrefixBackbone) else backbone


def cache_frozen_layers(tower: nn.Module, num_layers: int, store: FrozenLayerStore, keep_depths=()) -> FrozenPrefixBackbone:
    """Serve the frozen embeddings and lowest `num_layers` layers (-1: all) of a text tower's backbone
    from `store`: its `backbone` becomes a `FrozenPrefixBackbone` over the same modules."""
    tower.backbone = FrozenPrefixBackbone(plain_backbone(tower.backbone), num_layers, store, keep_depths)
    return tower.backbone
