"""difiisr.io"""
