"""Search a saved gallery with one caption through the checkpoint's processor and model.

    python trainer/query.py RUN/cross_modal "ein roter Hund neben einem Auto" --gallery RUN/cross_modal/test_gallery

The logic is `cl2cm_hf.cli.query`.
"""

import sys

from cl2cm_hf.cli.query import main

if __name__ == "__main__":
    sys.exit(main())
