from evo_cli.main import main

main()
