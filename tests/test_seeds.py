"""Seeds are independent runs: an ensemble's extra member never coincides with a campaign seed, a seed is set
with --seeds only (an override would be recorded and ignored), and the report keeps members out of a variant's
seed spread."""

from __future__ import annotations

import pytest

from harness.core.jobconfig import JobConfig
from harness.report.runs import MEMBER, RETRAINED, run_kind
from harness.run.plan import MAX_MEMBERS, member_seed
from harness.spec.campaign import MAX_SEED, parse_overrides, parse_seeds
from harness.spec.registry import RegistryError, load_registry


def test_member_seeds_never_meet_a_campaign_seed_or_each_other():
    seen = {}
    for seed in (0, 1, 2, 999, 1000, MAX_SEED):
        assert member_seed(seed, 0) == seed
        for k in range(1, 4):
            s = member_seed(seed, k)
            assert s > MAX_SEED and s not in seen, (seed, k, seen.get(s))
            seen[s] = (seed, k)
    assert max(seen) < 2**64  # torch.manual_seed takes it
    with pytest.raises(RegistryError):
        member_seed(0, MAX_MEMBERS)


@pytest.mark.parametrize("text", ["0,-1", "1,1", str(MAX_SEED + 1), "123456789012345678901234567890", "a"])
def test_bad_seeds_are_refused(text):
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds(text)


def test_seed_override_is_refused_not_ignored():
    registry = load_registry()
    with pytest.raises(ValueError, match="--seeds 5"):
        parse_overrides(["seed=5"], registry, ["esa"], "demo")
    with pytest.raises(ValueError, match="--seeds 5"):
        parse_overrides(["esa.seed=5"], registry, ["esa"], "demo")


def test_members_are_their_own_report_kind():
    def kind(source: str) -> str:
        config = {"stage": "evaluate", "method": "esa", "variant": "bigru", "dataset": "demo", "source": source}
        return run_kind(JobConfig.from_dict(config))

    assert kind("seed0") == kind("seed1000") == kind("seed3+set-abcd1234") == RETRAINED
    assert kind("seed0-member2") == kind("seed7-member3") == MEMBER
