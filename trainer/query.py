"""Search a saved gallery with one caption, using only the checkpoint (its own shipped code).

    python trainer/query.py RUN/cross_modal "ein roter Hund neben einem Auto" --gallery RUN/cross_modal/test_gallery

Runs `cl2cm_hf/evaluation/query.py` as a script, which does not import `cl2cm_hf`.
"""

import importlib.util
import runpy
from pathlib import Path

if __name__ == "__main__":
    package = Path(importlib.util.find_spec("cl2cm_hf").origin).parent
    runpy.run_path(str(package / "evaluation" / "query.py"), run_name="__main__")
