"""`python -m core`: the command line (core.cli)."""

import os
import sys
import warnings

from core.cli import main

if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # the CLI prints its own messages
    warnings.filterwarnings("ignore", category=FutureWarning)
    sys.exit(main())
