"""The tools' one exit rule (`cl2cm_hf.cli.run_tool`): the package's own errors and unusable files are
one line and status 2; anything else (a bug here or in a library) keeps its traceback."""

import errno

import pytest

from cl2cm_hf.cli import is_user_error, run_tool
from cl2cm_hf.errors import CL2CMError


def _raise(err):
    def run():
        raise err
    return run


@pytest.mark.parametrize("err", [CL2CMError("bad\x1b[31m setting"), FileNotFoundError(errno.ENOENT, "no such file", "x.yaml"),
                                 PermissionError(errno.EACCES, "denied", "out")])
def test_user_errors_are_one_escaped_line_and_status_2(err, capsys):
    assert run_tool("tool", _raise(err)) == 2
    line = capsys.readouterr().err
    assert line.startswith("tool: error: ") and line.count("\n") == 1 and "\x1b" not in line


@pytest.mark.parametrize("err", [ValueError("inside torch"), RuntimeError("a bug"), KeyError("x"), OSError("no errno")])
def test_other_errors_keep_their_traceback(err):
    assert not is_user_error(err)
    with pytest.raises(type(err)):
        run_tool("tool", _raise(err))


def test_debug_shows_the_traceback_of_a_user_error(monkeypatch):
    monkeypatch.setenv("CL2CM_DEBUG", "1")
    with pytest.raises(CL2CMError):
        run_tool("tool", _raise(CL2CMError("bad")))


def test_the_package_errors_share_the_base():
    from cl2cm_hf.data import DataFormatError
    from cl2cm_hf.hub.push import CheckpointError
    from cl2cm_hf.search import BrokenIndexError, ModelMismatchError
    from cl2cm_hf.training.run_record import RunMismatchError

    for cls in (DataFormatError, CheckpointError, BrokenIndexError, ModelMismatchError, RunMismatchError):
        assert issubclass(cls, CL2CMError) and issubclass(cls, ValueError)
