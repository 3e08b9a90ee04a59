import sys

from clipvip.cli import main

sys.exit(main())
