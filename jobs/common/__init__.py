"""What the job entry points share: options, Ray init and sizing, the runner."""
