"""Every patch of Faust (and of the mode and aiokafka code under it) the tagger relies on, in one place.

- :mod:`stream.faust.app`: the app factory (``create_app``), the customer table and its
  write-behind changelog, the current-event helper (``within_event``);
- :mod:`stream.faust.intake`: the batch intake that replaces the consumer's drain loop;
- :mod:`stream.faust.guards`: the guards that make at-least-once delivery hold;
- :mod:`stream.faust.offsets`: offset continuity: each partition's offsets in order, the
  gap filler that reads what Faust never delivered and marks it done in Faust's bookkeeping;
- :mod:`stream.faust.tansu`: the Tansu-only shim (highwaters, fetch wait);
- :mod:`stream.faust.private`: every private attribute of Faust, mode and aiokafka that
  the project reads, writes or replaces, and the versions they were checked against
  (tests/unit/test_faust_private.py fails when the installed packages differ).

Nothing outside this package may touch a private attribute of Faust, mode or aiokafka:
code elsewhere calls the functions here. Inside it ``import faust`` is the installed
faust-streaming package (imports are absolute), never this package.
"""
