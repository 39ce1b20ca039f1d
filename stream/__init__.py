"""Pure event parsing, rolling customer state and the streaming plumbing around them."""
