import sys

from sparsequant.cli import main

sys.exit(main())
