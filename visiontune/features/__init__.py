"""Features of a frozen backbone: computed once, then the head trains on them."""
