"""Measurement primitives shared by the unlearning methods and the audit that judges them.

The audit must not run the method's code, nor the method the audit's: a bug shared by both
would pass unnoticed. Both still have to mean the same thing by "this sample is a copy of a
training image", so the arithmetic of that lives here, below both layers, and each side
builds its own criterion from it with its own parameters.
"""

from .distances import NearestSamples, extraction_ratios, flat01, neighbourhood_distance

__all__ = ["NearestSamples", "extraction_ratios", "flat01", "neighbourhood_distance"]
