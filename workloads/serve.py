"""`python -m workloads.serve` (and the `serve` console script): the inference server entrypoint.

The contract with images, manifests and SageMaker hosting; the server does the work.
"""

import sys

from workloads.serving.server import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
