"""`python -m jobs.report`: a static HTML report of an OUTPUT."""
