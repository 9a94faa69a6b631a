"""The RLlib side of `smar train`: the PPO AlgorithmConfig (environment, env runners, RL module, the
constrained learner, the learning-rate schedule), the trained policy read back from the learner as a
standalone reranker, and the PPO options `smar bench agent` shares with TrainConfig.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium.vector.utils import batch_space

from agent import flat_obs
from envs.serp_env import SerpConfig, SerpEnv
from envs.serp_vector_env import SerpVectorEnv

if TYPE_CHECKING:
    from agent.train import TrainConfig

MODULE_ID = "default_policy"


class RLlibSerpEnv(SerpEnv):
    """SerpEnv built from an RLlib env config {"pages", "truth", "serp"} (RLlib calls `env_cls(config)`),
    its observations flat (`agent.flat_obs`; `dict_observation_space` is SerpEnv's Dict)."""

    def __init__(self, config: dict | None = None) -> None:
        config = dict(config or {})
        super().__init__(pages=config.get("pages"), truth=config.get("truth"), config=config.get("serp"))
        self.dict_observation_space = self.observation_space
        self.observation_space = flat_obs.flat_space(self.observation_space)
        self._flat = flat_obs.flatten(self.obs_arrays, batch_dims=1)  # [pages, W], once

    def _obs(self, p: int) -> np.ndarray:
        return self._flat[p]


class RLlibSerpVectorEnv(SerpVectorEnv):
    """SerpVectorEnv from an RLlib env config {"pages", "truth", "serp", "num_envs"}: with
    `gym_env_vectorize_mode="vector_entry_point"` RLlib builds `env_cls(env_config | {"num_envs": N})`.
    Its observations are flat (`agent.flat_obs`): one gather of [num_envs, W] per step."""

    def __init__(self, config: dict | None = None) -> None:
        config = dict(config or {})
        super().__init__(
            num_envs=int(config.get("num_envs", 1)),
            pages=config.get("pages"),
            truth=config.get("truth"),
            config=config.get("serp"),
        )
        self.single_observation_space = flat_obs.flat_space(self.single_env.observation_space)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self._flat = flat_obs.flatten(self.single_env.obs_arrays, batch_dims=1)

    def _obs(self) -> np.ndarray:
        return self._flat[self._page]


class SharedEnvConfig(dict):
    """An env config whose deep copy shares its values: RLlib deep-copies the whole AlgorithmConfig
    into every iteration's results (`Algorithm.get_auto_filled_metrics`), and the pages and truth in
    here are read-only inputs that need no copy (Ray still pickles them to remote env runners)."""

    def __deepcopy__(self, memo: dict) -> SharedEnvConfig:
        return SharedEnvConfig(self)


def reranker_state(module_state: dict[str, Any]) -> dict[str, Any]:
    """The WholePageReranker state dict inside an RLModule state ("reranker." prefix), as torch tensors."""
    import torch

    out = {
        k[len("reranker.") :]: torch.as_tensor(np.asarray(v))
        for k, v in module_state.items()
        if k.startswith("reranker.")
    }
    if not out:
        raise ValueError("module state holds no 'reranker.*' weights")
    return out


def policy_network(algo, config_json: dict):
    """The trained scoring network as a standalone WholePageReranker (eval mode), from the learner."""
    import torch

    from pretrain.reranker import RerankerConfig, WholePageReranker

    with torch.random.fork_rng():  # building a module draws init weights: keep training's RNG untouched,
        net = WholePageReranker(RerankerConfig.from_json(config_json))  # so evaluating never changes a run
    net.load_state_dict(reranker_state(algo.learner_group.get_weights([MODULE_ID])[MODULE_ID]))
    return net.eval()


def lr_schedule(cfg: TrainConfig) -> float | list[list[float]]:
    """PPO's learning rate: a constant, or RLlib's piecewise-linear schedule [[env steps, lr], ...]
    (the learner applies the value at the env steps sampled so far, so iteration i + 1 uses the value
    at i x train_batch and the first iteration uses the first point's)."""
    if cfg.lr_end is None and not cfg.lr_warmup:
        return cfg.lr
    total = cfg.iterations * cfg.train_batch
    points = [[0, cfg.lr / 10 if cfg.lr_warmup else cfg.lr]]
    if cfg.lr_warmup:
        points.append([min(cfg.lr_warmup, total), cfg.lr])
    if cfg.lr_end is not None and points[-1][0] < total:
        points.append([total, cfg.lr_end])
    return points


def pretrain_margin(ckpt) -> float:
    """The consistency-hinge margin a reranker checkpoint was pretrained with (agent.constraint)."""
    from agent.constraint import checkpoint_margin

    return checkpoint_margin(ckpt.manifest)


def build_ppo_config(
    cfg: TrainConfig,
    train_split,
    model_config: dict,
    serp: SerpConfig,
    target: float | None,
    margin: float | None = None,
):
    """The PPOConfig of one run: `build_algo()` on it gives the algorithm `train_policy` trains."""
    from ray.rllib.algorithms.ppo import PPOConfig

    from agent.env_runner import SerpEnvRunner
    from agent.learner import ConstrainedPPOLearner, ConstraintConfig
    from agent.rl_module import env_to_module_pieces, module_spec

    constraint = ConstraintConfig(
        enabled=cfg.constraint,
        target=target,
        target_fraction=cfg.target_fraction,
        margin=ConstraintConfig.margin if margin is None else margin,
        multiplier_lr=cfg.multiplier_lr,
        multiplier_init=cfg.multiplier_init,
        reference_checkpoint=model_config.get("reference_checkpoint"),
        reference_kl_coeff=cfg.reference_kl_coeff,
        offset_lr_scale=cfg.offset_lr_scale,
        body_lr_scale=cfg.body_lr_scale,
        ratio=cfg.ratio,
        layout_ratio=cfg.layout_ratio,
        drop_bootstrap_rows=cfg.drop_bootstrap_rows,
    )
    lr: float | list = lr_schedule(cfg)
    mc = {k: v for k, v in model_config.items() if k != "reference_checkpoint"}
    mc["temperature"] = cfg.temperature
    mc["layout_noise"] = cfg.layout_noise
    env = SerpEnv(pages=train_split.pages, truth=train_split.truth, config=serp)  # its Dict: the flat layout
    mc[flat_obs.LAYOUT_KEY] = flat_obs.layout(env.observation_space)
    # The batched SerpVectorEnv steps all of a runner's envs in one user-model call; the old path
    # (cfg.vector_env False) stacks SerpEnvs in gymnasium's SyncVectorEnv.
    env_cls, vectorize = (
        (RLlibSerpVectorEnv, "vector_entry_point") if cfg.vector_env else (RLlibSerpEnv, "sync")
    )
    config = (
        PPOConfig()
        # RLlib unsquashes Box actions only; for the slate (MultiDiscrete) it would deep-copy every
        # action into an identical env column each step
        .environment(env_cls, normalize_actions=False)
        .env_runners(
            env_runner_cls=SerpEnvRunner,
            num_env_runners=cfg.env_runners,
            num_envs_per_env_runner=cfg.envs_per_runner,
            gym_env_vectorize_mode=vectorize,
            env_to_module_connector=env_to_module_pieces,
            rollout_fragment_length="auto",
            num_cpus_per_env_runner=1,
        )
        .rl_module(rl_module_spec=module_spec(mc))
        .learners(learner_class=ConstrainedPPOLearner, learner_config_dict=constraint.to_dict())
        .training(
            train_batch_size_per_learner=cfg.train_batch,
            minibatch_size=cfg.minibatch,
            num_epochs=cfg.epochs,
            lr=lr,
            gamma=cfg.gamma,
            lambda_=cfg.lambda_,
            clip_param=cfg.clip,
            entropy_coeff=cfg.entropy_coeff,
            use_kl_loss=cfg.use_kl_loss,
            grad_clip=cfg.grad_clip,
            vf_clip_param=100.0,
        )
        .debugging(seed=cfg.seed)
    )
    config.env_config = SharedEnvConfig(
        {"pages": train_split.pages, "truth": train_split.truth, "serp": serp.to_json()}
    )
    return config


def model_config_json(model_config: dict, smar_ckpt) -> dict:
    """The RerankerConfig (as JSON) of the network a model_config builds."""
    if model_config.get("reranker_config") is not None:
        return model_config["reranker_config"]
    from pretrain.checkpoint import verify_checkpoint

    return verify_checkpoint(model_config["checkpoint"]).config.to_json()


def network_shape(config) -> dict:
    """Every RerankerConfig field but the data-derived input widths, so --scratch trains a network of
    exactly the SMAR architecture (including options added to the reranker later)."""
    return {k: v for k, v in config.to_json().items() if k not in ("feature_dims", "query_dim", "user_dim")}


def ppo_options(args: Any) -> dict[str, Any]:
    """TrainConfig keyword arguments from a bench config's PPO fields (agent.bench.AgentBenchConfig)."""
    from envs.reward import RewardConfig

    return {
        "train_batch": args.train_batch,
        "epochs": args.epochs,
        "minibatch": args.minibatch,
        "lr": args.lr,
        "lr_end": args.lr_end if args.lr_end is not None and args.lr_end >= 0 else None,
        "temperature": args.temperature,
        "layout_noise": args.layout_noise,
        "offset_lr_scale": args.offset_lr_scale,
        "body_lr_scale": args.body_lr_scale,
        "ratio": args.ratio,
        "layout_ratio": args.layout_ratio,
        "target_fraction": args.target_fraction,
        "serp": SerpConfig(reward=RewardConfig(name=args.reward)),
    }
