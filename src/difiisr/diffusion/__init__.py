"""difiisr.diffusion"""
