"""The customer domain, pure: events, rolling state, time, due index, manual tags, profiles."""
