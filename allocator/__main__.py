import sys

from allocator.cli.main import main

sys.exit(main())
