"""benchmarks/held_out.py: the held-out query sets read the captions they name, and say which files are absent."""

import gzip
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.held_out import HELD_OUT, held_out_queries, missing

IMAGES = ["a.jpg", "b.jpg", "c.jpg"]


def _tree(root: Path) -> Path:
    """A three-image Multi30K test_2016 with Task 2 German descriptions and no Czech captions."""
    m30k = root / "data" / "multi30k"
    for task, name in ((1, "test_2016_flickr.txt"), (2, "test_2016_images.txt")):
        (m30k / f"task{task}" / "image_splits").mkdir(parents=True)
        (m30k / f"task{task}" / "image_splits" / name).write_text("\n".join(IMAGES) + "\n")
    (m30k / "task2" / "raw").mkdir(parents=True)
    for k in range(1, 6):
        with gzip.open(m30k / "task2" / "raw" / f"test_2016.{k}.de.gz", "wt") as f:
            f.write("".join(f"Beschreibung {k} von {image}\n" for image in IMAGES))
    return root


def test_task2_queries_are_five_descriptions_per_test_image(tmp_path):
    root = _tree(tmp_path)
    spec = HELD_OUT["de_task2"]
    assert missing(root, spec) == []
    queries = held_out_queries(root, spec, {"a.jpg", "c.jpg"})
    assert sorted(queries["visual_id"]) == ["a.jpg"] * 5 + ["c.jpg"] * 5 and set(queries["lang"]) == {"de"}
    assert "Beschreibung 3 von c.jpg" in queries["text"] and not any("b.jpg" in t for t in queries["text"])


def test_absent_captions_are_named(tmp_path):
    root = _tree(tmp_path)
    assert missing(root, HELD_OUT["cs"]) == [root / "data" / "multi30k" / "task1" / "raw" / "test_2016_flickr.cs.gz"]
    (root / "data" / "multi30k" / "task2" / "raw" / "test_2016.4.de.gz").unlink()
    assert [p.name for p in missing(root, HELD_OUT["de_task2"])] == ["test_2016.4.de.gz"]
