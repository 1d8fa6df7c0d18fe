"""Base network pieces of the Gemma-family decoder."""
