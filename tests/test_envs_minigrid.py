"""The MiniGrid environment factory: observation shapes and dtypes, seeding, success flag, id errors."""

import gymnasium as gym
import numpy as np
import pytest
from minigrid.core.world_object import Ball, Key
from minigrid.wrappers import ImgObsWrapper, ViewSizeWrapper

from envs import env_family, make_env
from envs.minigrid import make_minigrid


def test_symbolic_observation_is_7x7x3_uint8_grid_of_small_indices():
    env = make_env("MiniGrid-MemoryS7-v0", seed=0)()
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (7, 7, 3)
    assert obs.shape == (7, 7, 3) and obs.dtype == np.uint8
    assert obs.max() <= 10  # object/colour/state indices, not pixels


def test_rgb_and_fully_observable_modes_change_the_shape():
    assert make_minigrid("MiniGrid-MemoryS7-v0", observation="rgb", tile_size=8).observation_space.shape == (
        56,
        56,
        3,
    )
    assert make_minigrid("MiniGrid-DoorKey-5x5-v0", fully_observable=True).observation_space.shape == (
        5,
        5,
        3,
    )
    rgb_full = make_minigrid("MiniGrid-DoorKey-5x5-v0", observation="rgb", fully_observable=True, tile_size=4)
    assert rgb_full.observation_space.shape == (20, 20, 3)


def test_same_seed_same_level_and_copies_get_different_levels():
    first = [make_env("MiniGrid-DoorKey-5x5-v0", seed=3, idx=i)() for i in range(2)]
    again = make_env("MiniGrid-DoorKey-5x5-v0", seed=3, idx=0)()
    grid = [env.unwrapped.grid.encode() for env in (*first, again)]
    np.testing.assert_array_equal(grid[0], grid[2])
    layouts = {
        make_env("MiniGrid-DoorKey-5x5-v0", seed=3, idx=i)().unwrapped.grid.encode().tobytes()
        for i in range(6)
    }
    assert len(layouts) > 1


def test_is_success_at_episode_end_equals_positive_reward():
    env = make_env("MiniGrid-MemoryS7-v0", seed=0)()
    env.action_space.seed(0)
    outcomes = []
    for episode in range(30):
        env.reset(seed=episode)
        done = False
        while not done:
            _, reward, terminated, truncated, info = env.step(env.action_space.sample())
            done = terminated or truncated
            assert ("is_success" in info) == done
        outcomes.append((info["is_success"], reward > 0, info["episode"]["r"]))
    assert all(success == positive for success, positive, _ in outcomes)
    assert {success for success, _, _ in outcomes} == {True, False}  # a random walk both succeeds and fails


def test_unknown_minigrid_id_lists_close_matches():
    with pytest.raises(ValueError, match=r"MiniGrid-MemoryS8-v0.*close matches: .*MiniGrid-MemoryS7-v0"):
        make_env("MiniGrid-MemoryS8-v0")


def test_id_of_no_family_is_rejected_with_suggestions():
    with pytest.raises(ValueError, match=r"no supported family.*MiniGrid-MemoryS7-v0"):
        env_family("MiniGird-MemoryS7-v0")


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"observation": "pixels"}, "observation"), ({"tile_size": 0}, "tile_size")]
)
def test_bad_options_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_minigrid("MiniGrid-MemoryS7-v0", **kwargs)


@pytest.mark.parametrize("env_id", [e for e in gym.registry if e.startswith("MiniGrid-Memory")])
def test_every_memory_maze_runs_with_the_default_and_a_small_view(env_id):
    for view, shape in ((None, (7, 7, 3)), (5, (5, 5, 3)), (3, (3, 3, 3))):
        env = make_env(env_id, seed=0, view_size=view)()
        obs, _ = env.reset(seed=0)
        assert obs.shape == shape == env.observation_space.shape
        for _ in range(5):
            obs, *_ = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)


def test_a_three_by_three_view_is_channels_first_with_the_codes_in_front():
    wide = make_minigrid("MiniGrid-MemoryS7-v0", seed=3, view_size=3)
    obs, _ = wide.reset(seed=3)
    view = ImgObsWrapper(ViewSizeWrapper(gym.make("MiniGrid-MemoryS7-v0"), agent_view_size=3))
    hwc, _ = view.reset(seed=3)
    np.testing.assert_array_equal(obs, hwc.transpose(2, 0, 1))


@pytest.mark.parametrize(("env_id", "view"), [("MiniGrid-MemoryS7-v0", 3), ("MiniGrid-DoorKey-5x5-v0", 5)])
def test_a_narrow_view_gives_minigrids_view_size_codes_along_a_random_walk(env_id, view):
    ours = make_minigrid(env_id, view_size=view)
    theirs = ImgObsWrapper(ViewSizeWrapper(gym.make(env_id), agent_view_size=view))
    rng = np.random.default_rng(0)
    for seed in range(3):
        obs, _ = ours.reset(seed=seed)
        reference, _ = theirs.reset(seed=seed)
        for _ in range(30):
            layout = obs.transpose(1, 2, 0) if view == 3 else obs  # a 3x3 view is channels-first
            np.testing.assert_array_equal(layout, reference)
            action = int(rng.integers(3))
            obs, _, terminated, truncated, _ = ours.step(action)
            reference, *_ = theirs.step(action)
            if terminated or truncated:
                break


@pytest.mark.parametrize(("view", "tile", "side"), [(3, 12, 36), (5, 8, 40)])
def test_a_narrow_view_in_pixels_renders_that_view(view, tile, side):
    env = make_minigrid(
        "MiniGrid-MemoryS7-v0", seed=0, observation="rgb", tile_size=tile, view_size=view, actions=3
    )
    obs, _ = env.reset(seed=0)
    assert obs.shape == (side, side, 3) == env.observation_space.shape
    for _ in range(20):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        if terminated or truncated:  # the agent can reach a candidate in a few random steps
            obs, _ = env.reset()


@pytest.mark.parametrize("view", [2, 4, 0, True])
def test_view_size_must_be_odd_and_at_least_three(view):
    with pytest.raises(ValueError, match=rf"view_size={view!r} must be an odd integer >= 3"):
        make_minigrid("MiniGrid-MemoryS7-v0", view_size=view)


def test_actions_keeps_the_first_actions_with_their_meaning():
    env = make_minigrid("MiniGrid-MemoryS7-v0", actions=3)
    plain = make_minigrid("MiniGrid-MemoryS7-v0")
    assert env.action_space == gym.spaces.Discrete(3)
    assert (env.reset(seed=5)[0] == plain.reset(seed=5)[0]).all()
    for action in [2, 0, 2, 1, 2, 2]:  # forward, left, forward, right, forward, forward
        obs, *_ = env.step(action)
        plain_obs, *_ = plain.step(action)
        assert (obs == plain_obs).all()


@pytest.mark.parametrize("actions", [0, 8, 2.5, True])
def test_actions_out_of_range_is_named(actions):
    with pytest.raises(ValueError, match=rf"actions={actions!r} must be an integer from 1 to 7"):
        make_minigrid("MiniGrid-MemoryS7-v0", actions=actions)


# Every MiniGrid-Memory task MiniGrid registers: the hallway sizes and the Random ones,
# which draw the hallway's length per episode.
MEMORY_IDS = [
    "MiniGrid-MemoryS7-v0", "MiniGrid-MemoryS9-v0", "MiniGrid-MemoryS11-v0", "MiniGrid-MemoryS13-v0",
    "MiniGrid-MemoryS13Random-v0", "MiniGrid-MemoryS17Random-v0",
]  # fmt: skip


def test_the_memory_list_is_every_registered_memory_task():
    registered = [env_id for env_id in gym.registry if env_id.startswith("MiniGrid-Memory")]
    assert sorted(MEMORY_IDS) == sorted(registered)


def _walk_to_the_fork_and_choose(env, cue: int) -> bool:
    """A scripted agent with memory: it walks east to the fork, looks north and takes the
    candidate matching ``cue`` (MiniGrid codes: 5 key, 6 ball). True on success."""
    left, forward = 0, 2
    base = env.unwrapped
    while base.agent_pos[0] < base.success_pos[0]:
        env.step(forward)
    obs, *_ = env.step(left)  # facing north: the north candidate is 2 cells ahead
    north = int(obs[0][1, 0])  # channels-first codes, view cell (middle, far)
    if north != cue:
        env.step(left)
        env.step(left)
    *_, terminated, _, info = env.step(forward)
    assert terminated
    return bool(info["is_success"])


@pytest.mark.parametrize("env_id", MEMORY_IDS)
def test_start_at_cue_shows_the_cue_at_the_first_step_of_the_same_level(env_id):
    for seed in range(8):
        env = make_minigrid(env_id, seed=seed, view_size=3, actions=3, start_at_cue=True)
        plain = make_minigrid(env_id, seed=seed, view_size=3, actions=3)
        obs, _ = env.reset(seed=seed)
        plain.reset(seed=seed)
        base = env.unwrapped
        assert tuple(base.agent_pos) == (1, base.height // 2) and base.agent_dir == 0
        np.testing.assert_array_equal(base.grid.encode(), plain.unwrapped.grid.encode())
        assert base.success_pos == plain.unwrapped.success_pos
        cue = int(base.grid.get(1, base.height // 2 - 1).encode()[0])
        assert cue in (5, 6) and obs[0][0, 2] == cue  # the cue is the cell on the agent's left
        assert _walk_to_the_fork_and_choose(env, cue)


@pytest.mark.parametrize("option", ["start_at_cue", "fixed_candidates"])
def test_memory_options_refuse_tasks_without_a_cue_and_non_booleans(option):
    with pytest.raises(ValueError, match=f"{option}=True needs a MiniGrid-Memory task"):
        make_minigrid("MiniGrid-DoorKey-5x5-v0", **{option: True})
    with pytest.raises(ValueError, match=f"{option}='yes' must be True or False"):
        make_minigrid("MiniGrid-MemoryS7-v0", **{option: "yes"})


@pytest.mark.parametrize("env_id", MEMORY_IDS)
def test_fixed_candidates_make_the_cue_alone_say_the_way(env_id):
    cues, north_wins = set(), []
    for seed in range(12):
        options = {"view_size": 3, "actions": 3, "fixed_candidates": True, "start_at_cue": True}
        env = make_minigrid(env_id, seed=seed, **options)
        env.reset(seed=seed)
        base = env.unwrapped
        middle, x = base.height // 2, base.success_pos[0]
        assert isinstance(base.grid.get(x, middle - 2), Key)
        assert isinstance(base.grid.get(x, middle + 2), Ball)
        cue = int(base.grid.get(1, middle - 1).encode()[0])
        cues.add(cue)
        north_wins.append(base.success_pos == (x, middle - 1))
        assert north_wins[-1] == (cue == 5)  # north after a key, south after a ball
        assert _walk_to_the_fork_and_choose(env, cue)  # the matching candidate is still the goal
    assert cues == {5, 6}  # the cue is still drawn
