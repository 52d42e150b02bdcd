"""The `convfm` command line: one module per subcommand; Ray is imported only by the one that runs."""
