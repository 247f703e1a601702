"""gRPC API: servicer, error mapping, server lifecycle."""
