"""``python -m orion_grpc.device``: the device daemon (same as ``orion device``)."""

import sys

from .cli import main

sys.exit(main())
