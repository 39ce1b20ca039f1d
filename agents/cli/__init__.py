"""The `tagger` command line: one module per command group, the terminal console and the dev mode."""
