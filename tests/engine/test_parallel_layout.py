import pytest
from hypothesis import given
from hypothesis import strategies as st

from moecloud.engine.parallel import ParallelLayout, expert_owners


def test_grid_coordinates_and_groups():
    layout = ParallelLayout(tp=2, ep=3)
    assert layout.world == 6
    assert [layout.coords(r) for r in range(6)] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert layout.tp_ranks(1) == [2, 3]
    assert layout.ep_ranks(1) == [1, 3, 5]
    with pytest.raises(ValueError, match="outside"):
        layout.coords(6)
    with pytest.raises(ValueError, match="at least 1"):
        ParallelLayout(tp=0)


@given(st.integers(1, 300), st.integers(1, 64))
def test_expert_map_is_balanced_and_contiguous(n_experts, ep):
    if ep > n_experts:
        with pytest.raises(ValueError, match="routed experts"):
            expert_owners(n_experts, ep)
        return
    owners = expert_owners(n_experts, ep)
    assert len(owners) == n_experts
    assert owners == sorted(owners)
    counts = [owners.count(r) for r in range(ep)]
    assert max(counts) - min(counts) <= 1 and min(counts) >= 1
