"""The team's monthly AWS Budgets cost limit, filtered on its cost-allocation tags.

Every resource carries the `team` and `environment` tags (see `PlatformSpec.tags`); once
they are activated as cost-allocation tags in the billing console, the budget sees exactly
this stack's spend. Both tags, not `team` alone: a team's dev and prod stacks have their own
limits (AWS Budgets ORs the values of one `TagKeyValue` cost filter, so the AND of two tags
needs a filter expression).
Each threshold notifies the alert e-mails when actual spend crosses it, and the highest
also when the month's forecast crosses it (the early warning): at most five notifications,
the most AWS Budgets accepts on one budget (the spec allows at most four thresholds).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.spec import PlatformSpec

# The cost-allocation tags budgets filter on; keys of `PlatformSpec.tags`.
COST_TAGS = ("team", "environment")


@dataclass
class BudgetArgs:
    spec: PlatformSpec


class Budget(pulumi.ComponentResource):
    """A monthly COST budget in USD: ACTUAL notifications per threshold, FORECASTED at the top."""

    budget_name: pulumi.Output[str]

    def __init__(self, name: str, args: BudgetArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlinfra:budget:Budget", name, None, opts)
        spec = args.spec
        budget_spec = spec.budget
        notifications = [
            aws.budgets.BudgetNotificationArgs(
                notification_type=kind,
                comparison_operator="GREATER_THAN",
                threshold=float(threshold),
                threshold_type="PERCENTAGE",
                subscriber_email_addresses=list(budget_spec.alert_emails),
            )
            for kind, threshold in budget_spec.notifications
        ]
        budget = aws.budgets.Budget(
            f"{name}-monthly",
            name=f"{spec.prefix}-monthly",
            budget_type="COST",
            time_unit="MONTHLY",
            limit_amount=f"{budget_spec.monthly_limit_usd:.2f}",
            limit_unit="USD",
            metrics="UnblendedCost",
            filter_expression=aws.budgets.BudgetFilterExpressionArgs(
                ands=[
                    aws.budgets.BudgetFilterExpressionAndArgs(
                        tags=aws.budgets.BudgetFilterExpressionAndTagsArgs(
                            key=key, values=[spec.tags[key]], match_options=["EQUALS"]
                        )
                    )
                    for key in COST_TAGS
                ]
            ),
            notifications=notifications,
            tags=spec.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.budget_name = budget.name
        self.register_outputs({"budget_name": self.budget_name})
