"""``python -m pydron.backend.worker``: run the worker program (see :mod:`.program`)."""
import sys

from pydron.backend.worker.program import main

sys.exit(main())
