import sys

from picluster.imagebuild.cli import main

sys.exit(main())
