"""difiisr.degradation"""
