import sys

from mailmand.cli import main

sys.exit(main())
