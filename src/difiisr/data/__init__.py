"""difiisr.data"""
