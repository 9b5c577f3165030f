import sys

from picluster.cli import main

sys.exit(main())
