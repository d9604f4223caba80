import sys

from mailkeep.cli import main

sys.exit(main())
