import sys

from tests.simulator.app import main

sys.exit(main())
