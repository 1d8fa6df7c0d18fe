"""mode_jax: multi-task parameter-efficient fine-tuning with MoDE in JAX/Flax NNX."""

__version__ = "0.1.0"
