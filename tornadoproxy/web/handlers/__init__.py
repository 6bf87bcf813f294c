"""HTTP handlers, one module per API family; each ends in a ROUTES list."""
