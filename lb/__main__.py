from lb.cli import main

main()
