"""Using a trained model: predictions and evaluation on new images."""
