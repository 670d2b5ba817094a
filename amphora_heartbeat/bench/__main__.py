"""``python -m amphora_heartbeat.bench``: the receive-path benchmark, or ``bench manager``."""

import sys

from .report import main

if __name__ == "__main__":
    sys.exit(main())
