"""`python -m workloads.train` (and the `train` console script): the training entrypoint.

The contract with images, manifests and SageMaker; the harness does the work.
"""

import sys

from workloads.training.harness import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
