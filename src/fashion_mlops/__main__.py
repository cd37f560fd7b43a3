import sys

from fashion_mlops.cli import main

sys.exit(main())
