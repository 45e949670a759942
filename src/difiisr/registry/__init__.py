"""difiisr.registry"""
