"""provider"""
