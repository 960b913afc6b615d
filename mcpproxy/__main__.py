import sys

from mcpproxy.cli import main

sys.exit(main())
