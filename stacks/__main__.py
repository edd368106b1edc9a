"""The mlinfra Pulumi program: one team environment from its stack config.

`pulumi up -s <team>-<env>` runs this with `stacks/Pulumi.<team>-<env>.yaml`. A bad
config fails here, before any resource is registered.
"""

import pulumi

from components.platform import build_platform, config_source, stack_config
from components.spec import parse_spec

stack = pulumi.get_stack()
spec = parse_spec(stack_config(), config_source(stack))
pulumi.export("platform", build_platform(spec, stack))
