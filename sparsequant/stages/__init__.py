"""Built-in stages: thin adapters between the pipeline and the maths in the other packages."""
