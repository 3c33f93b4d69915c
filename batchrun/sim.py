"""`python -m batchrun.sim`: the simulator's old command, kept while the README names it.

The simulator is the package batchrun.simulator (`python -m batchrun.simulator`); once the docs
say so, this file can go.
"""

from batchrun.simulator.command import main

if __name__ == "__main__":
    main()
