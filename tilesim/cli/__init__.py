"""The `tilesim` command line: one module per subcommand, dispatched from `main`."""
