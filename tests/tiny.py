"""The tiny training config most tests share: one config, so its programs are compiled (and
traced) once per test session and read back from the caches by every other test."""

# 16 updates of 4 envs x 32 steps, evaluated (and checkpointed) every 4 updates.
TINY = [
    "total_timesteps=2048",
    "num_envs=4",
    "algo.rollout_len=32",
    "algo.num_minibatches=2",
    "algo.update_epochs=2",
    "eval.num_evals=4",
    "eval.episodes=4",
    "eval.absolute_factor=2",
    "logger.progress=false",
    "checkpoint.max_to_keep=3",
]
QUIET = ["logger.wandb.mode=disabled", "eval.video=false"]  # no W&B run, no final video
