"""transformers' common tests (ModelTesterMixin, ConfigTester, ProcessorTesterMixin), taken from
the source release of the installed transformers and cached under .cache/transformers-tests/.

`make transformers-tests` (run by `make test`) or ``python tests/transformers_common/fetch.py``
fetches it with ``pip download --no-binary :all: --no-deps transformers==<installed>``; the files
are never copied into this repository. The release lacks four modules those files import: the
stubs beside this file replace them (each says what it replaces). Layout of the cache, as the
release's files expect it::

    .cache/transformers-tests/<version>/hf_tests/{__init__,test_*_common}.py + stubs
    .cache/transformers-tests/<version>/utils/fetch_hub_objects_for_ci.py
"""

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

ROOT = Path(__file__).resolve().parents[2]
VERSION = transformers.__version__
CACHE = ROOT / ".cache" / "transformers-tests" / VERSION
PACKAGE = "hf_tests"
COMMON_FILES = ("test_modeling_common.py", "test_configuration_common.py", "test_processing_common.py")
STUBS = Path(__file__).parent / "stubs"


def is_cached() -> bool:
    return all((CACHE / PACKAGE / name).is_file() for name in COMMON_FILES)


def fetch() -> Path:
    """Download the source release of the installed transformers and assemble the cache; returns it."""
    if is_cached():
        return CACHE
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
             f"transformers=={VERSION}", "-d", tmp],
            check=True,
        )
        (archive,) = Path(tmp).glob("transformers-*.tar.gz")
        staging = Path(tmp) / "cache"
        package = staging / PACKAGE
        with tarfile.open(archive) as tar:
            for name in COMMON_FILES:
                member = tar.getmember(f"transformers-{VERSION}/tests/{name}")
                (package / name).parent.mkdir(parents=True, exist_ok=True)
                (package / name).write_bytes(tar.extractfile(member).read())
        (package / "__init__.py").touch()
        for stub in STUBS.rglob("*.py"):
            relative = stub.relative_to(STUBS)
            target = staging / "utils" / relative if relative.parent == Path(".") else package / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(stub, target)
            if package in target.parents and target.parent != package:
                (target.parent / "__init__.py").touch()
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(CACHE, ignore_errors=True)
        shutil.move(str(staging), CACHE)
    return CACHE


def add_to_path_or_skip() -> None:
    """Put the cached common tests on `sys.path` for the test module calling this at import, or skip
    that module saying why (not cached, and no network to fetch them)."""
    import pytest

    try:
        sys.path.insert(0, str(fetch()))
    except Exception as err:
        pytest.skip(
            f"transformers {VERSION}'s common tests are not cached in {CACHE} and could not be fetched "
            f"({type(err).__name__}: {err}); run `make transformers-tests` with network access",
            allow_module_level=True,
        )

if __name__ == "__main__":
    print(fetch())
