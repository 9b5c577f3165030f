"""The cluster tier: every entry of ``scenarios.SCENARIOS`` on a fresh namespace LAN."""

import pytest

from tests.cluster.scenarios import SCENARIOS
from tests.cluster.steps import Scenario


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_scenario(cluster, scenario: Scenario):
    scenario.run(cluster)


def test_scenario_names_are_unique():
    """A name is a test id and an artifacts directory: two entries must not share one."""
    names = [s.name for s in SCENARIOS]
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)
