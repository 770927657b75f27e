"""`python -m careline.agent ...`: the same as the `careline-agent` command."""

import sys

from careline.agent.entry import main

sys.exit(main())
