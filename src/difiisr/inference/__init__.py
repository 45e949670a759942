"""difiisr.inference"""
