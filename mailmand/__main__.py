"""`python -m mailmand`, and the PyInstaller entry. Called through a link named
sendmail, mailmand-sendmail or mailq, the one binary acts as that command."""

import os
import sys

from mailmand.cli import mailq_main, main, sendmail_main

COMMANDS = {"sendmail": sendmail_main, "mailmand-sendmail": sendmail_main, "mailq": mailq_main,
            "mailmand-mailq": mailq_main}

sys.exit(COMMANDS.get(os.path.basename(sys.argv[0]), main)())
