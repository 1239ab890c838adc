"""One module per `ponder` subcommand; see ponder.cli."""
