"""PyInstaller's entry script for the self-contained agent (scripts/build-agent.sh)."""

import sys

from careline.agent.entry import main

if __name__ == "__main__":
    sys.exit(main())
