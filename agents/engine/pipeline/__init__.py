"""The tagger's per-event path as one-way stages, one module per stage.

A message travels as one :class:`~agents.engine.pipeline.types.Message`:

- :mod:`~agents.engine.pipeline.route`: offsets in order, parsing, routing, the urgency test,
  dead letters and re-keying (may call commands, apply, coalesce);
- :mod:`~agents.engine.pipeline.commands`: sweeps, cut-off moves, re-evaluation and the partition
  bookkeeping (may call coalesce, emit);
- :mod:`~agents.engine.pipeline.apply`: events, envelopes' parts, profiles, manual commands and
  erasures applied to the state, exactly once (may call coalesce, emit);
- :mod:`~agents.engine.pipeline.coalesce`: evaluate now, or defer under backlog (may call emit);
- :mod:`~agents.engine.pipeline.emit`: evaluation, outputs and Redis staging (calls no stage).

A stage imports only the stages after it, and no later stage calls back into an earlier
one. :mod:`~agents.engine.pipeline.types` holds what they share. :class:`agents.engine.runtime.Runtime`
builds them and is the façade the rest of the worker uses.
"""
