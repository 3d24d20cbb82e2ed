"""One file per training loss."""
