"""Outputs get the permissions the umask gives any file, and a stage folder path that is a symlink
or a file never breaks the atomic swap (cl2cm_hf/atomic.py)."""

import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cl2cm_hf.atomic import atomic_directory, replace_directory

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002], ids=["022", "002"])
def test_written_files_and_folders_get_the_umask_permissions(tmp_path, umask):
    # A subprocess: the umask is process-wide and must not leak into other tests.
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        os.umask({umask})
        from pathlib import Path
        from cl2cm_hf.atomic import atomic_directory, atomic_write_text
        from cl2cm_hf.modeling_cl2cm import CL2CMCrossModalModel
        from conftest import features_config
        root = Path({str(tmp_path)!r})
        with atomic_directory(root / "final") as tmp:
            CL2CMCrossModalModel(features_config()).save_pretrained(tmp)
            (tmp / "sub").mkdir()
        atomic_write_text(root / "final" / "README.md", "card")
        atomic_write_text(root / "test_results.md", "table")
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    folder_mode, file_mode = 0o777 & ~umask, 0o666 & ~umask
    assert _mode(tmp_path / "final") == folder_mode
    assert _mode(tmp_path / "final" / "sub") == folder_mode
    for name in ("final/README.md", "final/model.safetensors", "final/config.json", "test_results.md"):
        assert _mode(tmp_path / name) == file_mode, name


def test_a_stage_folder_that_is_a_file_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "stage"
    target.write_text("not a folder")
    for _attempt in range(2):  # the second attempt meets the same state: nothing was half-changed
        with pytest.raises(NotADirectoryError, match="stage: exists and is not a folder"):
            with atomic_directory(target) as tmp:
                (tmp / "x").write_text("new")
        assert target.read_text() == "not a folder"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]
    source = tmp_path / "new"
    source.mkdir()
    with pytest.raises(NotADirectoryError, match="not a folder"):
        replace_directory(source, target)
    assert source.is_dir() and target.is_file()


def test_a_stage_folder_that_is_a_symlink_is_followed_on_every_run(tmp_path):
    real = tmp_path / "elsewhere" / "stage"
    real.mkdir(parents=True)
    (real / "old").write_text("old")
    link = tmp_path / "run" / "stage"
    link.parent.mkdir()
    link.symlink_to(real)
    for version in ("one", "two", "three"):  # repeated runs keep working
        with atomic_directory(link) as tmp:
            (tmp / "weights").write_text(version)
        assert link.is_symlink() and (link / "weights").read_text() == version
        assert not (link / "old").exists()
        leftovers = [p.name for p in real.parent.iterdir() if p.name != "stage"]
        assert leftovers == [] and list(link.parent.iterdir()) == [link]


def test_a_dangling_symlink_or_a_link_to_a_file_is_refused(tmp_path):
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "missing")
    with pytest.raises(NotADirectoryError, match="does not exist"):
        with atomic_directory(dangling):
            pass
    a_file = tmp_path / "file"
    a_file.write_text("x")
    to_file = tmp_path / "to_file"
    to_file.symlink_to(a_file)
    with pytest.raises(NotADirectoryError, match="not a folder"):
        with atomic_directory(to_file):
            pass
    assert dangling.is_symlink() and to_file.is_symlink() and a_file.read_text() == "x"


def test_a_leftover_backup_that_is_a_file_or_link_does_not_break_the_swap(tmp_path):
    folder = tmp_path / "stage"
    with atomic_directory(folder) as tmp:
        (tmp / "a").write_text("1")
    (tmp_path / ".stage.previous").write_text("junk")  # e.g. left by an older version
    with atomic_directory(folder) as tmp:
        (tmp / "a").write_text("2")
    (tmp_path / ".stage.previous").symlink_to(tmp_path / "nowhere")
    with atomic_directory(folder) as tmp:
        (tmp / "a").write_text("3")
    assert (folder / "a").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]
