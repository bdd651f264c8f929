"""fedtrust.transport: mutual-TLS gRPC servers and channels (`server`, `tls`),
caller identity from the peer certificate (`peer`), size limits and options
(`limits`), chunked transfer (`chunks`), and the one mapping between fedtrust
errors and gRPC status codes (`status`)."""
