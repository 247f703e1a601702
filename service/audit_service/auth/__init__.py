"""Bearer-token authentication: who is calling, and what they may see."""
