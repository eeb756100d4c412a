"""The Gotaxy client: one control connection, local services behind it."""
