"""exeunit"""
