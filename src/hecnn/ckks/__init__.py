"""ckks"""
