"""`python -m workloads.monitoring`: the scheduled monitor (see `scheduled`)."""

import sys

from workloads.monitoring.scheduled import main

sys.exit(main())
