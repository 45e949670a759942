"""difiisr.models"""
