"""difiisr: diffusion-based x4 infrared image super-resolution (DifIISR / ResShift / SinSR family).

Importing the package does no work: no tracking URI is set, no device is probed, nothing is downloaded.
"""

__version__ = "0.1.0"
