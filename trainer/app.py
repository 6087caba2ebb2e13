"""The search page over an index, as a file that also runs as a Hugging Face Space.

    python trainer/app.py INDEX                 # or: CL2CM_INDEX=INDEX python trainer/app.py

The page is `cl2cm_hf.cli.app` (``cl2cm-app INDEX --port N`` is the same with options). To make
a Gradio Space of it, put this file at the Space's root as ``app.py`` with:

- ``requirements.txt``: one line installing this package with its app extra, e.g.
  ``cl2cm-hf[app] @ git+https://github.com/<owner>/cl2cm-hf`` (or a wheel committed to the Space);
- the index folder (``cl2cm-index MODEL --images DIR --out index``) as ``index/`` (or named by
  the Space variable ``CL2CM_INDEX``), with the model folder and the images beside it: the index
  records both by absolute path, so build it where the Space runs (``/home/user/app`` on Spaces).

Host and port come from Gradio's own variables (a Space sets ``GRADIO_SERVER_NAME`` and
``GRADIO_SERVER_PORT``); elsewhere the page listens on 127.0.0.1:7860.
"""

import os
import sys

from cl2cm_hf.cli.app import serve
from cl2cm_hf.search import SearchIndex

if __name__ == "__main__":
    serve(SearchIndex.load(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CL2CM_INDEX", "index")), host=None)
