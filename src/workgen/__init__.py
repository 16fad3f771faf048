"""workgen"""
