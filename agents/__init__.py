"""Faust agents, timers and web views, and the ``tagger`` command line."""
