"""Exchange weights with transformers (the PyTorch world) without network access."""
