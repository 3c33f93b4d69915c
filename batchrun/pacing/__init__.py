"""Pacing: the limiter and what a server charges, learned from what it says.
"""
