import sys

from picluster.build.cli import main

sys.exit(main())
