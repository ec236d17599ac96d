"""unlearn_lib: erase training data's influence from diffusion models.

Subpackages by concern: ``data`` (manifests, selection), ``models`` (diffusers presets,
training, sampling), ``unlearning`` (the algorithm registry), ``audit`` (evaluations,
kept apart from the methods they judge).
"""

__version__ = "0.1.0"
