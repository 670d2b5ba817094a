"""``python -m amphora_heartbeat``: the command line (:mod:`amphora_heartbeat.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
