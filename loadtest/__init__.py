"""The BayChat load generator (see its own issue); speaks only the public protocol."""
