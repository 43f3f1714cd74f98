"""Shared gRPC service plumbing: settings, server builder, interceptor, errors, database.

Both services build and run their servers through here, so health, reflection, request
ids, access logs, error translation and graceful shutdown behave the same in each.
"""
