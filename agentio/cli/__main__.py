"""``python -m agentio.cli``: the ``agentio`` command.

Layer: tools.
"""

import sys

from . import main

sys.exit(main())
