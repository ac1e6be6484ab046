"""The training loop, its optimizer and schedule."""
