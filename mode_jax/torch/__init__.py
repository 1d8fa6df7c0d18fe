"""mode_jax adapters in PyTorch, on a `transformers` Gemma; no JAX needed.

    python -m mode_jax.export --format=torch ...   # writes the files below

    import transformers
    from mode_jax.torch import attach
    model = transformers.AutoModelForCausalLM.from_pretrained(HF_BASE)
    attach.attach(model, EXPORT_DIR)     # wraps q_proj ... down_proj in place
    model.generate(...)

`spec` (no torch import) describes the exported files; `layers` holds one
vectorised `torch.nn.Module` per adapter kind (the equations of METHODS.md);
`attach` reads an export and wraps the model's projections.
"""
