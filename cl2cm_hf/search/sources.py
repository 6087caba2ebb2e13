"""What a build indexes (the reader stage): items from a folder, a list file, a `datasets` folder or a
visual store, each with its cache key; pictures for feature rows; odd names refused one by one."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.search.checks import name_problem, printable

IMAGE_ROWS = 256  # dataset rows whose embedded image bytes are read (and hashed) at a time
COMPARE = {"mtime": "path + size + mtime (files)", "hash": "path + sha256 of the content (files)"}


@dataclass
class Item:
    """One thing to index: id, file (None for features), cache key, caption; `row` for dataset rows."""

    id: str
    path: str | None
    key: str
    caption: str | None = None
    row: int | None = None
    problem: str | None = None  # known bad before decoding (e.g. cannot stat)
    files: tuple[str, ...] = ()  # the files the item's embedding is read from (for --compare hash)


def _file_key(path: Path) -> str:
    stat = path.stat()
    return f"file:{path}|{stat.st_size}|{stat.st_mtime_ns}"


def _file_item(item_id: str, path: Path) -> Item:
    path = path.absolute()
    try:
        path = path.resolve()  # a symlink is indexed (and shown) as the file it points to
    except (OSError, RuntimeError):
        pass  # a loop: stat below names it
    try:
        return Item(item_id, str(path), _file_key(path), files=(str(path),))
    except FileNotFoundError:
        return Item(item_id, str(path), f"missing:{path}", problem="file not found")
    except OSError as err:
        return Item(item_id, str(path), f"unstat:{path}", problem=f"unreadable: {err.strerror or err}")


def folder_items(folder: Path, block: int = 1 << 16):
    """Every non-hidden file below `folder` (id = relative posix path), in lists of about `block`,
    symlinked sub-folders followed once; folders that cannot be listed, and links that lead back into
    `folder` (or above it: a loop) or to a folder already walked, become items with the reason."""
    items = []
    real_root = folder.resolve()
    walked: set[tuple[int, int]] = set()  # (device, inode) of every folder walked or about to be

    def unreadable(err: OSError) -> None:
        rel = Path(err.filename).relative_to(folder).as_posix() if err.filename else str(err)
        items.append(Item(rel + "/", err.filename, f"unlisted:{err.filename}", problem=f"folder unreadable: {err.strerror or err}"))

    def follow(path: Path) -> bool:
        if not path.is_symlink():
            return True
        try:
            target = path.resolve(strict=True)
            st = target.stat()
        except (OSError, RuntimeError):
            return True  # os.walk reports what it cannot list through `unreadable`
        if target == real_root or real_root in target.parents or target in real_root.parents:
            reason = "symlinked folder leads back into the indexed folder (already indexed there, or a loop): not followed"
        elif (st.st_dev, st.st_ino) in walked:
            reason = "symlinked folder leads to a folder already indexed (a second link, or a loop): not followed"
        else:
            walked.add((st.st_dev, st.st_ino))
            return True
        rel = path.relative_to(folder).as_posix()
        items.append(Item(rel + "/", str(path), f"revisited:{rel}", problem=reason))
        return False

    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        st = os.stat(root)
        walked.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and follow(Path(root) / d))
        for name in sorted(files):
            if not name.startswith("."):
                path = Path(root) / name
                items.append(_file_item(path.relative_to(folder).as_posix(), path))
        if len(items) >= block:
            yield items[:]
            items.clear()  # the callbacks above append to this list
    yield items


def list_items(list_file: Path, block: int = 1 << 16):
    """Paths listed one a line in `list_file` (relative to its folder; id = the line), `block` at a time."""
    items = []
    with open(list_file, encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#"):
                items.append(_file_item(line, list_file.parent / line))
                if len(items) == block:
                    yield items
                    items = []
    yield items


def _is_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file())


def _open_dataset(folder: Path):
    """The `datasets` folder with its images left undecoded (the loader's workers decode them)."""
    from datasets import Image, load_from_disk

    dataset = load_from_disk(str(folder))
    if "image" in dataset.column_names:
        return dataset.cast_column("image", Image(decode=False))
    if "path" not in dataset.column_names:
        raise CL2CMError(f"{folder}: a dataset to index needs an 'image' (datasets.Image) or a 'path' column; found {dataset.column_names}")
    return dataset


def open_source(images=None, features=None):
    """The dataset or store `collect_items` returns with the items, opened without listing them: what
    a worker of a distributed build (`cl2cm_hf.search.ray_build`) reads its chunks from."""
    if features is not None:
        from cl2cm_hf.data import open_visual_store
        from cl2cm_hf.data.image_paths import IMAGES_FILE

        folder = Path(features)
        return open_visual_store(folder) if (folder / IMAGES_FILE).is_file() else SavedFeatures(folder, 1 << 16)
    return _open_dataset(Path(images)) if _is_dataset(Path(images)) else None


def dataset_items(folder: Path, window: int):
    """(blocks of about `window` items, the dataset with undecoded images) of a `datasets` folder: ids
    and captions are read a window at a time, embedded image bytes `IMAGE_ROWS` rows at a time."""
    dataset = _open_dataset(folder)
    columns = dataset.column_names
    light = [c for c in ("id", "caption", "path") if c in columns]
    names = dataset.select_columns(light) if light else None  # the columns without image bytes

    def blocks():
        for start in range(0, len(dataset), window):
            stop = min(start + window, len(dataset))
            part = names[start:stop] if names is not None else {}
            ids = part["id"] if "id" in columns else [str(i) for i in range(start, stop)]
            captions = part.get("caption") or [None] * (stop - start)
            if "image" in columns:
                images = (image for a in range(start, stop, IMAGE_ROWS) for image in dataset[a : min(a + IMAGE_ROWS, stop)]["image"])
            else:
                images = ({"path": path} for path in part["path"])
            items = []
            for row, item_id, caption, image in zip(range(start, stop), ids, captions, images):
                data, path = (image or {}).get("bytes"), (image or {}).get("path")
                if data is not None:
                    item = Item(str(item_id), path, "sha256:" + hashlib.sha256(data).hexdigest(), caption, row)
                elif path:
                    item = _file_item(str(item_id), folder / path)
                    item.caption, item.row = caption, row
                else:
                    item = Item(str(item_id), None, f"row:{row}", caption, row, problem="no image in this row")
                items.append(item)
            yield items

    return blocks(), dataset


def store_items(folder: Path, window: int):
    """(blocks of items, the source the encoder reads) of a feature store or image/frame store
    (`open_visual_store`); keys hash the feature rows, or the frame files' path + size + mtime. A feature
    store is read `window` rows at a time (`SavedFeatures`); an image/frame store is loaded whole."""
    from cl2cm_hf.data import open_visual_store
    from cl2cm_hf.data.image_paths import IMAGES_FILE

    if not (folder / IMAGES_FILE).is_file():
        source = SavedFeatures(folder, window)
        return source.items(), source
    store = open_visual_store(folder)  # an ImagePathStore
    items = []
    for visual_id in store.ids:
        frames = store.paths(visual_id)
        try:
            key = "frames:" + "||".join(_file_key(p.absolute()) for p in frames)
        except OSError as err:
            items.append(Item(visual_id, str(frames[0]), f"missing:{frames[0]}", problem=f"unreadable: {err.strerror or err}"))
            continue
        items.append(Item(visual_id, str(frames[0].absolute()), key, files=tuple(str(p.absolute()) for p in frames)))
    return [items], store


class SavedFeatures:
    """A saved feature store read a block of rows at a time (`cl2cm_hf.data.feature_rows`): `items` hashes
    the rows in store order, `window` is the in-memory store of some items' rows (what the encoder reads)."""

    BLOCK_BYTES = 64 << 20  # feature bytes read at a time (fewer than `rows` rows when rows are long)

    def __init__(self, folder: Path, rows: int):
        from cl2cm_hf.data.feature_rows import saved_row_bytes

        self.folder = folder
        self.rows = max(1, min(rows, self.BLOCK_BYTES // saved_row_bytes(folder)))

    def items(self):
        from cl2cm_hf.data.feature_rows import saved_id_blocks

        start = 0
        for ids in saved_id_blocks(self.folder, self.rows):
            block = self.window_of(range(start, start + len(ids)), ids)
            values, mask = block.lookup(ids)
            values, mask = values.numpy(), None if mask is None else mask.numpy()
            items = []
            for i, visual_id in enumerate(ids):
                if mask is None:
                    data = values[i].tobytes()
                else:  # the bytes of this row looked up alone (`lookup([id])`): its own frames and mask
                    n = int(mask[i].sum())
                    data = values[i, :n].tobytes() + mask[i, :n].tobytes()
                digest = hashlib.sha256(data).hexdigest()
                items.append(Item(visual_id, None, f"features:{visual_id}|{digest}", row=start + i))
            yield items
            start += len(ids)

    def window_of(self, rows, ids):
        from cl2cm_hf.data.feature_rows import saved_rows

        rows = list(rows)
        name = f"feature store {self.folder} (rows {rows[0]}..{rows[-1]})" if rows else f"feature store {self.folder}"
        return saved_rows(self.folder, rows, ids, name)

    def window(self, items: list[Item]):
        """The store of `items`' rows, read now (a copy; what one encode call looks up)."""
        items = sorted(items, key=lambda item: item.row)
        return self.window_of([item.row for item in items], [item.id for item in items])


def pictures_by_id(folder: Path) -> dict[str, Path]:
    """The picture of each id in `folder` (``<id>.<ext>``, else the first file of ``<id>/``)."""
    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such pictures folder (expected <id>.<ext> or <id>/ frame files)")
    # One listing of the folder (not one glob per item): name -> its picture, the first file by name.
    # Names that are not UTF-8 or hold control characters are never shown (as files are never indexed).
    entries = sorted(entry for entry in folder.iterdir() if not name_problem(entry.name))
    shown: dict[str, Path] = {}
    for entry in entries:
        if entry.is_file() and "." in entry.name:
            shown.setdefault(entry.name.rpartition(".")[0], entry)
    for entry in entries:
        if entry.is_dir() and entry.name not in shown:
            first = next((p for p in sorted(entry.iterdir()) if p.is_file() and not name_problem(p.name)), None)
            if first is not None:
                shown[entry.name] = first
    return shown


def attach_pictures(items: list[Item], shown: dict[str, Path]) -> None:
    """Give items without a file (feature rows) their picture (`pictures_by_id`), if they have one."""
    for item in items:
        if item.path is None and item.id in shown:
            item.path = str(shown[item.id].resolve())  # a symlink: the file it points to, as the page shows it


def rekey_by_content(items: list[Item]) -> None:
    """Key file items (and frame lists) by the sha256 of their content instead of size + mtime."""
    for item in items:
        if item.problem or not item.files:
            continue
        digest = hashlib.sha256()
        try:
            for path in item.files:
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 22), b""):
                        digest.update(block)
        except OSError as err:
            item.problem = f"unreadable: {err.strerror or err}"
            continue
        item.key = f"content:{'||'.join(item.files)}|sha256:{digest.hexdigest()}"


def _refuse_bad_names(items: list[Item]) -> None:
    """Items whose id or file name is not UTF-8 or holds control characters are skipped, named escaped."""
    for item in items:
        problem = name_problem(item.id) or (item.path and name_problem(item.path))
        if problem:
            item.id, item.path = printable(item.id), item.path and printable(item.path)
            item.key, item.problem = f"badname:{item.path or item.id}", problem


def collect_items(images=None, features=None, window: int = 1 << 16):
    """(blocks of items, in no order: `ItemTable` sorts them; the source description; the dataset or
    store the loader needs). Folders, list files, datasets and feature stores come about `window` items
    at a time; image/frame stores (one JSON file) in one block."""
    if (images is None) == (features is None):
        raise CL2CMError("pass images= (a folder, a list file or a datasets folder) or features= (a store folder)")
    if features is not None:
        folder = Path(features)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such feature or image store folder")
        blocks, source = store_items(folder, window)
        kind = "features"
    else:
        path = Path(images)
        source = None
        if _is_dataset(path):
            blocks, source = dataset_items(path, window)
            kind = "dataset"
        elif path.is_dir():
            blocks, kind = folder_items(path, window), "folder"
        elif path.is_file():
            blocks, kind = list_items(path, window), "list"
        else:
            raise FileNotFoundError(f"{path}: no such image folder, list file or datasets folder")
    return (_named(block) for block in blocks), {"kind": kind, "path": str(Path(images or features).absolute())}, source


def _named(items: list[Item]) -> list[Item]:
    _refuse_bad_names(items)
    return items
