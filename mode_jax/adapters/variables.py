"""Variable types of the adapter family and the filters derived from them.

Trainable is a type, never a regex: one filter drives the optimizer, the
gradients, the checkpoints and the parameter counts.
"""

from flax import nnx


class AdapterParam(nnx.LoRAParam):
  """A trained adapter weight (`lora_a`, `lora_b`, `router`)."""


class AdapterState(nnx.Variable):
  """Adapter-owned state that is never trained by gradients.

  Examples: load-balancing biases updated by a rule after each step, and
  frozen random projections (FlyLoRA's `lora_a`). Saved with the adapter.
  """


class BalancingBias(AdapterState):
  """A balancing bias [R] stepped by a rule after each training step.

  Its `rate` metadata is the rule's step u; `balancing.update` finds these
  by type and steps each from the counts its own adapter sowed.
  """


# nnx.Param also matches nnx.LoRAParam subclasses, hence the explicit Not.
FROZEN_BASE = nnx.All(nnx.Param, nnx.Not(AdapterParam))
TRAINABLE = AdapterParam
ADAPTER = nnx.Any(AdapterParam, AdapterState)
