"""The mlinfra policy pack: `pulumi preview --policy-pack policy`. Policies live in
mlinfra_policies.py, importable (and tested) without the Pulumi engine."""

from mlinfra_policies import POLICIES
from pulumi_policy import EnforcementLevel, PolicyPack

PolicyPack(
    name="mlinfra",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)
