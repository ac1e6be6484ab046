"""Saved models: the bundle format (safetensors + JSON), and exports."""
