"""OUTPUT as a store: the commit log of each run (docs/commits.md), work units, the done index, the sweep,
table schemas, the lease and the manifest. Reading INPUT is diffseg.inputs."""
