"""The ``difiisr`` command line: one module per verb under ``difiisr.cli``."""
