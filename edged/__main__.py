from edged.cli.main import main

main()
