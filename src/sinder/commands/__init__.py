"""One module per ``sinder`` sub-command: ``add_arguments(parser)`` and ``run(args) -> int``."""
