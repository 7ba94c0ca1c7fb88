import sys

from shrinkthink.cli import main

sys.exit(main())
