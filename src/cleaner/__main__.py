"""``python -m cleaner`` == the ``cleaner`` command."""

import sys

from cleaner.cli import main

sys.exit(main())
