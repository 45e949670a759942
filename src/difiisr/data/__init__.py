"""Data sets: synthetic thermal scenes (``synthetic``) and the expectation suite over images/pairs (``validation``).

Import the sub-modules directly (``from difiisr.data.validation import validate_images``); nothing heavy is
imported with the package.
"""
