"""OUTPUT as a store: listing and reading inputs, the commit protocol, table schemas, the manifest."""
