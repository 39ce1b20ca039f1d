"""``python -m agents`` is the ``tagger`` command."""

from .cli import main

main()
