"""Reading image folders: layout and splits, decoding, transforms, loaders."""
