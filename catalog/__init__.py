"""Consumer side of eoforge: the tile catalog and the PyTorch dataset. Light imports only."""
