"""GPU instance types EC2 offers for node pools, and what each carries.

The spec rejects a GPU pool whose instance type is not here, and the node pools label
their nodes with the GPU model. Sources: the EC2 accelerated-computing instance pages.
"""

from __future__ import annotations

from typing import NamedTuple


class GpuInstance(NamedTuple):
    gpu: str  # GPU model, as nodes are labelled
    count: int  # GPUs per instance
    memory_gib: int  # memory per GPU


def _family(gpu: str, memory_gib: int, sizes: dict[str, int]) -> dict[str, GpuInstance]:
    return {size: GpuInstance(gpu, count, memory_gib) for size, count in sizes.items()}


_ONE_TO_EIGHT = {
    "xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1,
    "12xlarge": 4, "24xlarge": 4, "48xlarge": 8,
}  # fmt: skip

GPU_FAMILIES: dict[str, dict[str, GpuInstance]] = {
    "g4dn": _family("T4", 16, {
        "xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1,
        "12xlarge": 4, "metal": 8,
    }),
    "g5": _family("A10G", 24, _ONE_TO_EIGHT),
    "g6": _family("L4", 24, _ONE_TO_EIGHT),
    "g6e": _family("L40S", 48, _ONE_TO_EIGHT),
    "p3": _family("V100", 16, {"2xlarge": 1, "8xlarge": 4, "16xlarge": 8}),
    "p3dn": _family("V100", 32, {"24xlarge": 8}),
    "p4d": _family("A100", 40, {"24xlarge": 8}),
    "p4de": _family("A100", 80, {"24xlarge": 8}),
    "p5": _family("H100", 80, {"48xlarge": 8}),
    "p5e": _family("H200", 141, {"48xlarge": 8}),
    "p5en": _family("H200", 141, {"48xlarge": 8}),
}  # fmt: skip

GPU_INSTANCE_TYPES: dict[str, GpuInstance] = {
    f"{family}.{size}": info
    for family, sizes in GPU_FAMILIES.items()
    for size, info in sizes.items()
}


def gpu_instance(instance_type: str) -> GpuInstance | None:
    """What an instance type carries, or None when it has no GPU we support."""
    return GPU_INSTANCE_TYPES.get(instance_type)


def allowed_gpu_families() -> str:
    return ", ".join(f"{family}.*" for family in GPU_FAMILIES)
