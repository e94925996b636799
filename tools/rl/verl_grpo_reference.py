"""veRL's GRPO pieces on given inputs: the reference for crates/mimo-train/tests/grpo_reference.rs.

Reads one JSON object from the file named on the command line (written by the Rust test):
  rewards       per group, the rollouts' scalar rewards (rows are the groups' rollouts in order)
  mask          [b][T] 1 on response tokens
  logp_new, logp_old, logp_rollout   [b][T] (the current policy, the trainer's old policy, the engine)
  eps_low, eps_high, rollout_is ("token" | "sequence"), rollout_is_cap
and prints, from veRL 0.9.1's own functions (verl.trainer.ppo.core_algos and rollout_corr_helper):
  adv_sample_std  compute_grpo_outcome_advantage(norm_adv_by_std_in_grpo=True), one per row
  adv_centered    the same with norm_adv_by_std_in_grpo=False (Dr. GRPO)
  is_weights      compute_rollout_correction_weights(log_ratio = old - rollout, rollout_is, threshold = cap)
  loss            mimo's normalisation with veRL's loss: the mean over groups of
                  compute_policy_loss_vanilla(..., loss_agg_mode="token-mean", rollout_is_weights) on the
                  group's rows, dual clip off; the advantages are adv_sample_std
  grad            d loss / d logp_new  [b][T]
  clipfrac        veRL's pg_clipfrac over all rows (for information)

veRL is installed with --no-deps (its pins, transformers<5.11 and ray, conflict with this environment).
Importing verl runs module-level imports of ray, tensordict and omegaconf that the functions used here never
call; they are replaced by empty stand-in modules before the import. The computation is veRL's code.
"""

import json
import sys
import types

import numpy as np
import torch


class _Stub(types.ModuleType):
    """A module whose every attribute is a fresh empty class (enough for type annotations and subclassing)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(name, (), {})
        setattr(self, name, cls)
        return cls


def _import_verl():
    for name in ["ray", "tensordict", "tensordict.tensorclass", "omegaconf"]:
        if name not in sys.modules:
            m = _Stub(name)
            m.__path__ = []
            sys.modules[name] = m
    from verl.trainer.ppo import core_algos, rollout_corr_helper

    return core_algos, rollout_corr_helper


class _ActorConfig(dict):
    """The attributes compute_policy_loss_vanilla reads from veRL's ActorConfig."""

    def __getattr__(self, name):
        return self[name]


def main():
    core_algos, corr = _import_verl()
    inp = json.load(open(sys.argv[1]))
    f32 = torch.float32
    mask = torch.tensor(inp["mask"], dtype=f32)
    new = torch.tensor(inp["logp_new"], dtype=f32, requires_grad=True)
    old = torch.tensor(inp["logp_old"], dtype=f32)
    rollout = torch.tensor(inp["logp_rollout"], dtype=f32)
    groups = inp["rewards"]
    index = np.array([g for g, rs in enumerate(groups) for _ in rs])
    rewards = [r for rs in groups for r in rs]
    b, t = mask.shape
    assert len(rewards) == b, (len(rewards), b)

    # An outcome reward sits on the last response token, as in veRL's reward manager.
    token_rewards = torch.zeros(b, t, dtype=f32)
    for i, r in enumerate(rewards):
        last = int(mask[i].nonzero().max())
        token_rewards[i, last] = r
    adv_std, _ = core_algos.compute_grpo_outcome_advantage(token_rewards, mask, index, norm_adv_by_std_in_grpo=True)
    adv_ctr, _ = core_algos.compute_grpo_outcome_advantage(token_rewards, mask, index, norm_adv_by_std_in_grpo=False)

    weights, is_metrics = corr.compute_rollout_correction_weights(
        log_ratio=old - rollout,
        response_mask=mask,
        rollout_is=inp["rollout_is"],
        rollout_is_threshold=inp["rollout_is_cap"],
    )

    config = _ActorConfig(
        clip_ratio=inp["eps_low"],
        clip_ratio_low=inp["eps_low"],
        clip_ratio_high=inp["eps_high"],
        # Dual-clip PPO off: mimo's loss has no lower bound on negative-advantage terms.
        clip_ratio_c=1e30,
        global_batch_info={},
    )
    loss = torch.zeros((), dtype=f32)
    for g in range(len(groups)):
        rows = torch.tensor(np.nonzero(index == g)[0])
        pg_loss, _ = core_algos.compute_policy_loss_vanilla(
            old_log_prob=old[rows],
            log_prob=new[rows],
            advantages=adv_std[rows],
            response_mask=mask[rows],
            loss_agg_mode="token-mean",
            config=config,
            rollout_is_weights=weights[rows],
        )
        loss = loss + pg_loss / len(groups)
    loss.backward()
    _, all_metrics = core_algos.compute_policy_loss_vanilla(
        old, new.detach(), adv_std, mask, "token-mean", config, weights
    )

    row_value = lambda a: [float(a[i][mask[i] > 0][0]) for i in range(b)]
    print(
        json.dumps(
            {
                "adv_sample_std": row_value(adv_std),
                "adv_centered": row_value(adv_ctr),
                "is_weights": weights.tolist(),
                "is_metrics": {k: float(v) for k, v in is_metrics.items()},
                "loss": float(loss.detach()),
                "grad": new.grad.tolist(),
                "clipfrac": all_metrics["actor/pg_clipfrac"],
            }
        )
    )


if __name__ == "__main__":
    main()
