import sys

from tgjax.cli import main

sys.exit(main())
