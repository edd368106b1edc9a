"""`python -m workloads.train` (and the `train` console script): the training entrypoint.

The contract with images, manifests and SageMaker; the harness does the work.
"""

import logging
import os
import sys

from workloads.training.harness import main

__all__ = ["main"]

if __name__ == "__main__":
    code = main()
    if "LOCAL_RANK" in os.environ:  # one rank of a distributed job (torchrun)
        # Its outputs are written and the process group destroyed: leave without the
        # interpreter's teardown, where gloo's threads sometimes abort a rank of a job that
        # succeeded ("terminate called without an active exception", seen under load).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
