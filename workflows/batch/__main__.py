import sys

from workflows.batch.cli import main

sys.exit(main())
