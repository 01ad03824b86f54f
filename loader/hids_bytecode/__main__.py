"""`python -m hids_bytecode`, the same as the `hids-bytecode` command."""

import sys

from .cli import main

sys.exit(main())
