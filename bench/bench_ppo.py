"""Training throughput: RIM policy vs the LSTM policy of the same total hidden size vs memoryless PPO.

The three policies (``--policy rim``, ``lstm`` and ``ppo`` of the training core: SB3's PPO with
the same features extractor, heads and hyperparameters) train on the same environment with
the same YAML block (the training core's ``make_config``), in this process, interleaved repeat
by repeat so that load from other processes hits them alike. Reports env steps per second of
``learn()`` (rollouts and updates) as the median over repeats, and the ratios RIM / LSTM and
RIM / memoryless PPO.

    python bench/bench_ppo.py                                  # MiniGrid-MemoryS7-v0, 3 x 4096 steps
    python bench/bench_ppo.py --steps 8192 --repeats 5 -params n_epochs:2
    python bench/bench_ppo.py --env PongNoFrameskip-v4 --steps 1024 --repeats 1   # paper's RIM, GRU 6x85
    python bench/bench_ppo.py --env PongNoFrameskip-v4 --device cuda --threads 4 --steps 8192
    python bench/bench_ppo.py --learned rim=R/final_model.zip lstm=L/final_model.zip ppo=P/final_model.zip
    python bench/bench_ppo.py --env PongNoFrameskip-v4 --policies rim --learned rim=R/final_model.zip

``--learned`` times agents loaded from saved models instead of fresh ones: the regime of a
trained agent, whose episodes are short (on MemoryS7: a few steps instead of up to 245), so
a rollout holds many more episode starts.

On Atari the YAML's 8 envs x 128 steps make the warm-up rollout 1,024 steps: about 35 s per
policy on one CPU core, where both policies run at 30-40 steps/s.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import torch as th

from rim_agents.training import build_algorithm_kwargs, make_config, make_vec_env, parse_overrides


def steps_per_second(
    env_id: str, policy: str, steps: int, overrides: dict, device: str, saved: str | None = None
) -> tuple[float, float]:
    """Train an agent for ``steps`` steps after one warm-up rollout: a fresh one, or the one
    saved at ``saved`` (a ``.zip`` of the same policy).

    ``learn()`` always finishes its rollout, so it may run past ``steps`` (up to one rollout of
    ``n_envs * n_steps``); the rate counts the steps it actually ran.

    :return: (env steps per second, learn() wall time in seconds)
    """
    config = make_config(env_id, policy=policy, overrides=overrides, device=device)
    algorithm, policy_name, kwargs = build_algorithm_kwargs(config)
    env = make_vec_env(config, config.n_envs, seed=0)
    try:
        if saved is None:
            model = algorithm(policy_name, env, seed=0, device=device, **kwargs)
        else:
            model = algorithm.load(saved, env=env, device=device)
            model.set_random_seed(0)
        model.learn(config.n_envs * model.n_steps)  # warm-up: allocations, first-call overheads
        before = model.num_timesteps
        start = time.perf_counter()
        model.learn(steps, reset_num_timesteps=False)
        seconds = time.perf_counter() - start
        done = model.num_timesteps - before  # whole rollouts: at least `steps`
    finally:
        env.close()
    return done / seconds, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="MiniGrid-MemoryS7-v0", help="environment id")
    parser.add_argument("--steps", type=int, default=4096, help="env steps timed per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per policy (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument(
        "-params", "--hyperparams", nargs="+", default=[], metavar="KEY:VALUE", help="overrides"
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        default=["rim", "lstm", "ppo"],
        choices=["rim", "lstm", "ppo"],
        help="which policies to time (the ratios need rim with lstm or ppo)",
    )
    parser.add_argument(
        "--learned",
        nargs="+",
        default=None,
        metavar="POLICY=MODEL.zip",
        help="time trained agents, one POLICY=PATH for each of --policies (saved by the training core)",
    )
    args = parser.parse_args(argv)
    saved: dict[str, str | None] = {"rim": None, "lstm": None, "ppo": None}
    if args.learned:
        pairs = dict(item.partition("=")[::2] for item in args.learned)
        if set(pairs) != set(args.policies) or len(pairs) != len(args.learned):
            wanted = " ".join(f"{policy}=PATH" for policy in args.policies)
            parser.error(f"--learned needs one model per timed policy ({wanted}), got {args.learned}")
        saved.update(pairs)
    th.set_num_threads(args.threads)
    overrides = parse_overrides(args.hyperparams)
    results: dict[str, list[tuple[float, float]]] = {policy: [] for policy in args.policies}
    for repeat in range(args.repeats):
        for policy in results:
            sps, seconds = steps_per_second(
                args.env, policy, args.steps, overrides, args.device, saved[policy]
            )
            results[policy].append((sps, seconds))
            print(
                f"repeat {repeat}: {policy:4s} {sps:7.1f} steps/s ({seconds:.1f} s for {args.steps} steps)",
                flush=True,
            )
    config = make_config(args.env, overrides=overrides)
    rim_kwargs = config.hyperparams.get("policy_kwargs", {}).get("rim_kwargs", {})
    regime = "agents loaded from --learned" if args.learned else "fresh agents"
    setting = f"{args.threads} torch thread(s), {args.device}, {regime}"
    print(f"\n{args.env}, RIM {rim_kwargs} vs LSTM of the same hidden size vs memoryless PPO, {setting}")
    median = {policy: statistics.median(sps for sps, _ in runs) for policy, runs in results.items()}
    for policy, runs in results.items():
        wall = statistics.median(seconds for _, seconds in runs)
        print(f"{policy:4s}: median {median[policy]:7.1f} env steps/s, learn() {wall:.1f} s per {args.steps}")
    for other, name in (("lstm", "LSTM"), ("ppo", "memoryless PPO")):
        if "rim" in median and other in median:
            print(f"ratio RIM / {name}: {median['rim'] / median[other]:.2f}x")
    print("command: python bench/bench_ppo.py " + shlex.join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
