"""Networks and algorithms."""
