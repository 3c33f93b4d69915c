from batchrun.simulator.command import main

main()
