"""The rich live display and tables; only the CLI loads it.
"""
