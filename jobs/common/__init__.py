"""What the two Ray jobs share: options and checks, Ray init and sizing, the runner and the actor base."""
