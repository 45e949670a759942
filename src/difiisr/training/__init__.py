"""difiisr.training"""
