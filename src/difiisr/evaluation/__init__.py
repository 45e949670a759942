"""difiisr.evaluation"""
