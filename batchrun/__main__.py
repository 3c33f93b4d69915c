from batchrun.cli.commands import main

main()
