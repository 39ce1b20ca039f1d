"""The read side: the Redis projection of every customer, its export, the dashboard's feed."""
