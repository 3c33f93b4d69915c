"""Pure decisions: what a response means, what to do next, what a request costs, presets and
prices.
"""
