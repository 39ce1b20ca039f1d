"""Who may see what: API tokens and roles, field and tag visibility, the audit trail, erasure requests."""
