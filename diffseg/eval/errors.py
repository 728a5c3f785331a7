"""The one error type of evaluation inputs."""


class EvaluationError(ValueError):
    """The inputs of an evaluation are missing or inconsistent; the message says what to fix."""
