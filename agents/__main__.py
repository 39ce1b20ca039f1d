"""``python -m agents`` is the ``tagger`` command."""

from agents.cli.main import main

main()
