"""The demo recommendation service: GET /demo/{id} -> {"id": .., "rec": .., "version": ..}."""
