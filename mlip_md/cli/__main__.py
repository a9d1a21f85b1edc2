"""``python -m mlip_md.cli ...``: the same as ``mlip-md ...``."""
import sys

from . import main

sys.exit(main())
